"""What running the fleet needs of its files: startup layers, memory, GPU memory and volumes.

fleet.toml's ``[layers.NAME]`` tables declare the startup order (``after = [...]``: the layers that
must be healthy first); each service names its ``layer`` (one that names none starts with the
first, and nothing waits for it: a warning). A machine's compose stack starts a
service once every service of the nearest earlier layers *on that machine* is healthy (a layer
with no service there is passed through). Checked across the fleet: no cycle, the declared GPU
memory of each machine within its card (unless the machine file says why it may not be), the
declared memory within its RAM, and one volume per mount point.
"""

from __future__ import annotations

from typing import Any

from buildtool.core.names import did_you_mean
from buildtool.model.schema import LAYER_SCHEMA, NAME_RE, Collector
from buildtool.model.types import Fleet, Service

FILE = "fleet.toml"
VOLUME_ROOT = "/data/"  # volumes mount below it: never over the app, the venv, /tmp or the system


def read_layers(c: Collector, data: Any) -> dict[str, tuple[str, ...]]:
    """fleet.toml's ``[layers]``: layer → the layers it starts after. A cycle is reported by its names."""
    if not isinstance(data, dict):
        c.add(FILE, "layers", "must be a table of [layers.NAME] tables")
        return {}
    layers: dict[str, tuple[str, ...]] = {}
    for name, table in data.items():
        if not NAME_RE.fullmatch(name):
            c.add(FILE, f"layers.{name!r}", "a layer name is lowercase letters, digits and '-'")
            continue
        v = c.table(FILE, f"layers.{name}", table, LAYER_SCHEMA, "layer")
        layers[name] = v.get("after", ())
    for name, after in layers.items():
        for i, other in enumerate(after):
            if other not in layers:
                c.add(FILE, f"layers.{name}.after[{i}]", f"unknown layer {other!r}; {did_you_mean(other, layers)}")
    cycle = _cycle(layers)
    if cycle:
        c.add(FILE, f"layers.{cycle[0]}.after", f"the startup order has a cycle: {' → '.join(cycle)}; remove one of these `after` entries")
    return layers


def _cycle(layers: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle of the ``after`` graph as a path that returns to its start, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        path.append(name)
        for other in layers.get(name, ()):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other in layers and other not in state and (found := visit(other)):
                return found
        path.pop()
        state[name] = 2
        return []

    for name in sorted(layers):
        if name not in state and (found := visit(name)):
            return found
    return []


def memory_mb(fleet: Fleet, svc: Service) -> int:
    """The service's memory limit: its own, else its family's (0: none declared)."""
    return svc.memory_mb or fleet.families[svc.family].memory_mb


def volumes(fleet: Fleet, svc: Service) -> tuple[str, ...]:
    """The named volumes the service mounts: its families', then its own."""
    return (*fleet.families[svc.family].volumes, *svc.volumes)


def on_machine(fleet: Fleet, machine: str) -> list[Service]:
    return [s for s in fleet.services.values() if machine in s.machines]


def depends_on(fleet: Fleet, svc: Service, machine: str) -> list[str]:
    """The services of ``machine`` that must be healthy before ``svc`` starts: those of the nearest
    earlier layers that have any there."""
    present: dict[str, list[str]] = {}
    for other in on_machine(fleet, machine):
        present.setdefault(other.layer, []).append(other.name)
    found: set[str] = set()
    seen: set[str] = set()
    todo = list(fleet.layers.get(svc.layer, ()))
    while todo:
        layer = todo.pop()
        if layer in seen:
            continue
        seen.add(layer)
        if present.get(layer):
            found.update(present[layer])
        else:
            todo += fleet.layers.get(layer, ())
    return sorted(found)


def check_deployment(c: Collector, fleet: Fleet, *, layers_known: bool = True) -> None:
    """Layers named, GPU memory and memory within each machine, one volume per mount point
    (``layers_known`` False: fleet.toml could not be read, the layers are not judged)."""
    for svc in fleet.services.values():
        if layers_known and fleet.layers and not svc.layer:  # it starts at once, and nothing waits for it
            c.warn(svc.file, "layer", f"no startup layer: its compose service starts with the first; name one of {', '.join(sorted(fleet.layers))}")
        elif layers_known and svc.layer and svc.layer not in fleet.layers:
            c.add(svc.file, "layer", f"unknown layer {svc.layer!r}; {did_you_mean(svc.layer, fleet.layers)} (fleet.toml [layers])")
        if svc.family not in fleet.families:
            continue
        mounts: dict[str, str] = {}
        for spec in volumes(fleet, svc):
            name, path = spec.split(":", 1)
            if not path.startswith(VOLUME_ROOT):
                c.add(svc.file, "volumes", f"{spec!r} mounts outside {VOLUME_ROOT}; mount volumes below {VOLUME_ROOT}, never over the image")
            elif path in mounts and mounts[path] != name:
                c.add(svc.file, "volumes", f"{path} is the mount point of both {mounts[path]!r} and {name!r} (with its families'); keep one")
            mounts[path] = name
    for machine in fleet.machines.values():
        services = [s for s in on_machine(fleet, machine.name) if s.family in fleet.families]
        gpu = sorted(((s.vram_gb, s.name) for s in services if fleet.families[s.family].gpu and s.vram_gb), reverse=True)
        declared = sum(v for v, _ in gpu)
        if machine.has_gpu and declared > machine.vram_gb and not machine.vram_overcommit_reason.strip():
            top = ", ".join(f"{n} {v} GB" for v, n in gpu[:4])
            c.add(machine.file, "vram_gb", f"its services declare {declared} GB of GPU memory ({top}, ...) against the card's {machine.vram_gb} GB; "
                  "move services, lower their vram_gb, or say why it holds in vram_overcommit_reason (e.g. models are evicted on demand)")  # fmt: skip
        ram = sum(memory_mb(fleet, s) for s in services)
        if machine.ram_gb and ram > machine.ram_gb * 1024:
            c.add(machine.file, "ram_gb", f"its services' memory limits add up to {ram} MB, more than its {machine.ram_gb} GB; lower memory_mb")


def depth(fleet: Fleet, machine: str) -> int:
    """How many startup steps ``machine``'s stack takes: its longest ``depends_on`` chain (1: all at once)."""
    memo: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in memo:
            memo[name] = 1 + max((of(n) for n in depends_on(fleet, fleet.services[name], machine)), default=0)
        return memo[name]

    return max((of(s.name) for s in on_machine(fleet, machine)), default=0)
