"""IceCube ("Neutrinos in Deep Ice" Kaggle layout): simulate, ingest, featurise, reconstruct, evaluate."""
