"""The CLI's subcommands, one module per command family (simulate, icecube, nova, km3net, demo, bench).

Each module has ``add(sub, fmt)``, which builds its parser under :func:`neutrino_ray.cli.build_parser`, and
``run(args, command)``, a thin wrapper that imports its pipeline lazily (so building the parser imports no
pipeline), calls it and prints one summary line. The shared options live in :mod:`.common`.
"""
