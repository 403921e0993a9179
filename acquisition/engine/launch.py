"""From a ``run.start`` command (or an interrupted run's documents) to a :class:`RunSetup`.

Protocol and plate map are resolved here: a name is a file in the config's
``protocols_dir`` / ``plates_dir``; a text sent by the terminal is validated the same way.
Every error is a :class:`CommandError` whose message names the file and the location.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from acquisition.commands import ProtocolRunArgs, RunStartArgs
from acquisition.config import LabConfig
from acquisition.count_plate import LAYOUT_SOURCE, count_plate_protocol
from acquisition.count_plate import SOURCE as COUNT_PLATE_SOURCE
from acquisition.engine.operator import VirtualOperator
from acquisition.engine.recovery import ResumePoint
from acquisition.engine.setup import RunSetup
from acquisition.errors import CommandError, ConfigError
from acquisition.kinds import role_of
from acquisition.plate_maps import layout_from_data, parse_plate_map
from acquisition.protocols import Protocol, parse_protocol, protocol_from_data
from acquisition.steps import step_type

__all__ = ["setup_from_args", "setup_from_resume"]


def _read(directory: Path, name: str, what: str) -> tuple[str, str]:
    path = directory / f"{name}.toml"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise CommandError("not_found", f"no {what} '{name}' ({path} not found)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError("bad_request", f"{path}: cannot read it ({exc})") from None


async def setup_from_args(
    config: LabConfig, args: ProtocolRunArgs | RunStartArgs, run_hint: str
) -> RunSetup:
    """The files named are read on a worker thread: the daemon's loop never waits on a disk.

    :class:`RunStartArgs` are the shipped count-plate protocol's arguments
    (:mod:`acquisition.count_plate`): no file, and no plate id (the plate is the one in the
    counter; its readings say which)."""
    if isinstance(args, RunStartArgs):
        definition, made = count_plate_protocol(args, config)
        try:
            protocol = protocol_from_data(definition, source=COUNT_PLATE_SOURCE)
            made_layout = layout_from_data(made, source=LAYOUT_SOURCE) if made else None
        except ConfigError as exc:
            raise CommandError("bad_request", str(exc)) from None
        setup = _setup(config, protocol, definition, COUNT_PLATE_SOURCE, None, made,
                       LAYOUT_SOURCE if made else None, made_layout)  # fmt: skip
        return replace(setup, label=args.label)
    if args.protocol_toml is not None:
        text, source = args.protocol_toml, f"{args.protocol}.toml (sent by the terminal)"
    else:
        text, source = await asyncio.to_thread(
            _read, config.protocols_dir, args.protocol, "protocol"
        )
    try:
        protocol, definition = parse_protocol(text, source=source)
    except ConfigError as exc:
        raise CommandError("bad_request", str(exc)) from None
    plate_map: dict[str, Any] | None = None
    plate_source: str | None = None
    layout = None
    if args.plate_map_toml is not None or args.plate_map is not None:
        if args.plate_map_toml is not None:
            ptext, psource = args.plate_map_toml, f"{args.plate_map or 'plate map'} (sent)"
        else:
            assert args.plate_map is not None
            ptext, psource = await asyncio.to_thread(
                _read, config.plates_dir, args.plate_map, "plate map"
            )
        plate_source = psource
        try:
            layout = parse_plate_map(ptext, source=psource)
            plate_map = tomllib.loads(ptext)
        except (ConfigError, tomllib.TOMLDecodeError) as exc:
            raise CommandError("bad_request", str(exc)) from None
    on_a_plate = any(step_type(s.type).handles_plate for s in protocol.steps)
    plate_id = args.plate_id or (f"P{run_hint[-6:]}" if on_a_plate or plate_map else None)
    return replace(_setup(config, protocol, definition, source, plate_id, plate_map,
                          plate_source, layout), label=args.label)  # fmt: skip


def _setup(  # noqa: PLR0917 - one private call shape, named at its two callers
    config: LabConfig, protocol: Protocol, definition: dict[str, Any], source: str,
    plate_id: str | None, plate_map: dict[str, Any] | None, plate_source: str | None,
    layout: Any,
) -> RunSetup:  # fmt: skip
    """What every run start checks against its plate map and the lab config."""
    needs_map = [why for s in protocol.steps if (why := step_type(s.type).needs_plate_map)]
    if layout is None and needs_map:
        raise CommandError(
            "bad_request",
            f"protocol '{protocol.name}' {needs_map[0]}: give the run a plate map "
            "(run start ... --plate-map NAME_OR_FILE)",
        )
    for i, step in enumerate(protocol.steps):
        check = step_type(step.type).check_setup
        problem = check(step, layout, plate_source) if check is not None else None
        if problem is not None:
            raise CommandError("bad_request", f"{source}: steps[{i}]{problem[0]}: {problem[1]}")
    instruments = _instruments(config, protocol, source)
    return RunSetup(
        protocol=protocol, protocol_definition=definition, protocol_source=source,
        plate_id=plate_id, plate_map=plate_map, plate_map_source=plate_source, layout=layout,
        instruments=instruments,
        virtual_operator=_operator(config, plate_id, plate_map, instruments),
    )  # fmt: skip


def setup_from_resume(config: LabConfig, point: ResumePoint) -> RunSetup:
    """The setup an interrupted run was started with, from its start document."""
    protocol = protocol_from_data(point.protocol_definition, source=point.protocol_source)
    plate_map = point.plate.get("map")
    layout = layout_from_data(plate_map, source="the run's plate map") if plate_map else None
    held = point.plate.get("plate_id")
    plate_id = str(held) if held else None  # None: count-plate, the plate in the counter
    instruments = point.instruments or _instruments(config, protocol, point.protocol_source)
    return RunSetup(
        protocol=protocol, protocol_definition=point.protocol_definition,
        protocol_source=point.protocol_source, plate_id=plate_id, plate_map=plate_map,
        plate_map_source=point.plate.get("source"), layout=layout, instruments=instruments,
        virtual_operator=_operator(config, plate_id, plate_map, instruments),
        label=point.label,
    )  # fmt: skip


def _instruments(config: LabConfig, protocol: Protocol, source: str) -> dict[str, str]:
    """role -> instrument id for every role of every step."""
    out: dict[str, str] = {}
    for i, step in enumerate(protocol.steps):
        for role in step_type(step.type).roles:
            out[role] = _one_playing(config, role, getattr(step, "instrument", None),
                                     out.get(role), f"{source}: steps[{i}]")  # fmt: skip
    return out


def _one_playing(
    config: LabConfig, kind: str, wanted: str | None, chosen_before: str | None, where: str
) -> str:
    """The instrument playing the role ``kind`` (a counter: of kind counter, or of any kind
    that plays it) a step names, or the config's only one; one per role and run."""
    of_kind = [c.id for c in config.instruments if role_of(c.kind) == kind]
    if wanted is not None:
        match = next((c for c in config.instruments if c.id == wanted), None)
        if match is None or role_of(match.kind) != kind:
            raise CommandError(
                "bad_request",
                f"{where}.instrument: a {kind} of the lab config "
                f"({', '.join(of_kind) or 'none configured'}), got {wanted!r}",
            )
        chosen = wanted
    elif len(of_kind) == 1:
        chosen = of_kind[0]
    else:
        raise CommandError(
            "bad_request",
            f"{where}: the lab config has {'no' if not of_kind else len(of_kind)} {kind}s"
            + (f" ({', '.join(of_kind)}): name one with instrument = ..." if of_kind else ""),
        )
    if chosen_before not in (None, chosen):
        raise CommandError("bad_request", f"{where}.instrument: one {kind} per run")
    return chosen


def _operator(
    config: LabConfig, plate_id: str | None, plate_map: dict[str, Any] | None,
    instruments: dict[str, str],
) -> VirtualOperator | None:  # fmt: skip
    sim = config.simulation
    if not (sim.enabled and sim.virtual_operator and sim.control_port is not None):
        return None
    # A prompt may move the plate to an instrument no step drives (put it in the incubator
    # before a protocol that starts at the harvest): the config's first of each kind.
    where: dict[str, str] = {}
    for inst in config.instruments:
        where.setdefault(role_of(inst.kind), inst.id)
    return VirtualOperator(sim, plate_id, plate_map, {**where, **instruments})
