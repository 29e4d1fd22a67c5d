"""Each list of names in one place: the lists that are derived from one another agree, and the commands that
need no model do not import torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from neutrino_ray import settings, storage
from neutrino_ray.cli import build_parser
from neutrino_ray.icecube import architectures


def _choices(parser: argparse.ArgumentParser, *path: str, option: str) -> tuple[str, ...]:
    """The choices of ``option`` on the subcommand at ``path`` (e.g. "icecube", "train")."""
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    action = next(a for a in parser._actions if option in a.option_strings)
    return tuple(action.choices or ())


# Commands of the CLI that run no learned model, and the modules their code paths import (cli.run).
NO_TORCH_COMMANDS = [
    ["simulate", "icecube", "d"], ["simulate", "nova", "d"], ["simulate", "km3net", "d"],
    ["icecube", "predict", "d", "--out", "o"], ["icecube", "stats", "d", "--out", "o"],
    ["icecube", "evaluate", "d", "--predictions", "p", "--out", "o"],
    ["icecube", "compare", "d", "--predictions", "p", "q", "--out", "o"],
    ["km3net", "train", "d", "--model", "hist-gb", "--out", "o"],
    ["km3net", "predict", "d", "--model", "m", "--out", "o"],
    ["km3net", "evaluate", "d", "--model", "m", "--out", "o"],
]
NO_TORCH_MODULES = [
    "neutrino_ray.icecube.simwrite", "neutrino_ray.nova.simwrite", "neutrino_ray.km3net.simwrite",
    "neutrino_ray.icecube.predict", "neutrino_ray.icecube.scoring", "neutrino_ray.icecube.linefit",
    "neutrino_ray.icecube.uncertainty",
    "neutrino_ray.icecube.stats", "neutrino_ray.icecube.evaluate", "neutrino_ray.icecube.compare",
    "neutrino_ray.km3net.train", "neutrino_ray.km3net.predict", "neutrino_ray.km3net.evaluate",
]


@pytest.mark.integration  # a subprocess: a fresh interpreter's sys.modules
def test_the_parser_and_the_model_free_commands_do_not_import_torch() -> None:
    """Building the parser and parsing imports neither torch nor Ray (its defaults live in Ray-free modules such
    as icecube/options.py); the model-free commands' modules import no torch."""
    script = f"""
import importlib, json, sys
def heavy(*roots):
    return sorted(m for m in sys.modules if m.split(".")[0] in roots)
from neutrino_ray.cli import build_parser
parser = build_parser()
for argv in {NO_TORCH_COMMANDS!r}:
    parser.parse_args(argv)
print(json.dumps(heavy("torch", "ray")))
for m in {NO_TORCH_MODULES!r}:
    importlib.import_module(m)
print(json.dumps(heavy("torch")))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parser_imports, command_imports = (json.loads(line) for line in proc.stdout.splitlines()[-2:])
    assert parser_imports == [], parser_imports[:10]
    assert command_imports == []


def test_architecture_names_are_the_size_tables() -> None:
    from neutrino_ray.icecube import models, transformer
    from neutrino_ray.nova import architectures as nova_arch
    from neutrino_ray.nova import models as nova_models

    assert models.SIZES is architectures.GNN_SIZES and transformer.SIZES is architectures.TRANSFORMER_SIZES
    assert architectures.ARCHITECTURES == (*architectures.GNN_SIZES, *architectures.TRANSFORMER_SIZES)
    assert set(architectures.GNN_SIZES).isdisjoint(architectures.TRANSFORMER_SIZES)
    parser = build_parser()
    assert _choices(parser, "icecube", "train", option="--model") == architectures.ARCHITECTURES
    assert nova_models.SIZES is nova_arch.SIZES and nova_models.MODELS is nova_arch.MODELS
    assert _choices(parser, "nova", "train", option="--model") == nova_arch.MODELS
    for name in nova_arch.MODELS:  # every name the CLI offers builds
        assert nova_models.n_parameters(nova_models.build(name, 2)) > 0


def test_km3net_model_names_agree() -> None:
    from neutrino_ray.km3net import models as km_models

    assert _choices(build_parser(), "km3net", "train", option="--model") == km_models.MODELS
    assert tuple(km_models.GRIDS) == tuple(km_models.SPACES) == km_models.MODELS


def test_training_flags_are_the_settings_fields() -> None:
    """Every flagged Settings field is a flag of each training command, with the dataclass's default (batch
    size and learning rate: the command's), and nothing else of the command line reaches Settings."""
    flagged = {f.name for f in settings.flags()}
    assert {"workers", "epochs", "lr", "ema_decay", "precision", "patience"} <= flagged
    assert not flagged & {"out", "backend", "device_hook"}
    parser = build_parser()
    for argv, own in ((["icecube", "train", "d", "--out", "o"], {"batch_size": 128, "lr": 1e-3}),
                      (["nova", "train", "d", "--target", "numu-cc", "--out", "o"], {"batch_size": 64, "lr": 2e-3})):
        kwargs = settings.training_kwargs(parser.parse_args(argv))
        assert set(kwargs) == flagged
        assert settings.Settings(out="o", **kwargs) == settings.Settings(out="o", **own), argv
    # A value given on the command line arrives in Settings under the field's name.
    p = argparse.ArgumentParser()
    settings.add_training_args(p, batch_size=1, lr=0.1)
    s = settings.Settings(out="o", **settings.training_kwargs(p.parse_args(
        ["--workers", "3", "--ema", "0.99", "--precision", "fp32", "--optimizer", "adam", "--patience", "2"])))
    assert (s.workers, s.ema_decay, s.precision, s.optimizer, s.patience) == (3, 0.99, "fp32", "adam", 2)
    with pytest.raises(SystemExit):
        p.parse_args(["--workers", "0"])  # the field's value type checks it


def test_settings_hold_no_test_hooks() -> None:
    names = {f.name for f in dataclasses.fields(settings.Settings)}
    assert not {n for n in names if "fault" in n}


def test_reserved_manifest_keys_are_what_output_writes(tmp_path) -> None:
    with storage.Output(str(tmp_path / "out")) as out:
        out.write("a.txt", b"a")
        doc = out.commit()
    assert set(doc) == set(storage.RESERVED_MANIFEST_KEYS)
    for key in storage.RESERVED_MANIFEST_KEYS:
        with storage.Output(str(tmp_path / "out")) as out, pytest.raises(ValueError, match=key):
            out.commit(**{key: 1})


def test_nova_task_is_a_deprecated_alias_of_target(tmp_path, caplog) -> None:
    parser = build_parser()
    old = parser.parse_args(["nova", "train", "d", "--task", "flavour", "--out", "o"])
    new = parser.parse_args(["nova", "train", "d", "--target", "flavour", "--out", "o"])
    assert old.target == new.target == "flavour" and not hasattr(new, "deprecated")
    assert old.deprecated == ["--task is deprecated and will be removed in the next release: use --target"]
    from neutrino_ray.cli import main

    with caplog.at_level("WARNING", logger="neutrino_ray"):  # the warning comes before any work
        assert main(["nova", "train", str(tmp_path / "none"), "--task", "y", "--out", str(tmp_path / "o")]) == 2
    assert "--task is deprecated" in caplog.text and "use --target" in caplog.text


def test_a_command_builds_only_its_own_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_parser(argv)`` runs only the named family's ``add`` (a command touches no other family's code);
    the others keep their one-line help, and ``build_parser()`` (the full CLI, ``--help``) builds them all."""
    from neutrino_ray import cli

    built: list[str] = []
    for name, module in cli.COMMANDS.items():
        monkeypatch.setattr(module, "add", lambda sub, fmt, name=name, add=module.add: (built.append(name),
                                                                                       add(sub, fmt)))
    args = build_parser(["-q", "icecube", "predict", "d", "--out", "o"]).parse_args(
        ["-q", "icecube", "predict", "d", "--out", "o"])
    assert built == ["icecube"] and args.action == "predict" and args.wait == 0.0
    sub = next(a for a in build_parser(["nova"])._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(cli.COMMANDS)
    assert [c.help for c in sub._choices_actions] == [m.HELP for m in cli.COMMANDS.values()]
    built.clear()
    build_parser()
    assert built == list(cli.COMMANDS)
    built.clear()
    build_parser(["--help"])
    assert built == list(cli.COMMANDS)
