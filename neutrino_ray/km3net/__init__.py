"""KM3NeT track/shower classification from per-event reconstruction features (scikit-learn on Ray)."""
