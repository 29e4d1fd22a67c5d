"""NOvA-style dual-view pixel maps: simulator, Ray Data HDF5 reader, CNN tasks, evaluation, scoring."""
