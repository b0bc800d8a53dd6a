"""Structure checks: what every runtime image is, whatever its family, checked inside it before
it is pushed. Written in Python because the images have no find, grep or shell tools to spare."""

from __future__ import annotations

from collections.abc import Iterable

# Tools a runtime image leaves out unless its family lists them in runtime_tools, and how each shows.
TOOLS = {
    "apt": ("apt", "apt-get"),
    "dpkg": ("dpkg",),
    "perl": ("perl",),
    "pip": ("pip", "pip3"),
}

_NO_SETUID = """
import os, stat, sys
bad = [os.path.join(d, f) for d, _, fs in os.walk('/') if not d.startswith(('/proc', '/sys', '/dev'))
       for f in fs if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
       and os.lstat(os.path.join(d, f)).st_mode & (stat.S_ISUID | stat.S_ISGID)]
sys.exit('setuid/setgid: ' + ' '.join(sorted(bad)) if bad else 0)
"""
_NO_TOOLS = """
import importlib.util, shutil, sys
names, module = sys.argv[1].split(), sys.argv[2]
found = [f'{n} ({shutil.which(n)})' for n in names if shutil.which(n)]
if module and importlib.util.find_spec(module) is not None:
    found.append(f'python -m {module} ({importlib.util.find_spec(module).origin})')
sys.exit('present: ' + ', '.join(found) if found else 0)
"""
_NO_DOCS = """
import os, sys
bad = []
for top in ('/usr/share/man', '/usr/share/info', '/usr/share/doc'):
    for d, _, fs in os.walk(top):
        bad += [os.path.join(d, f) for f in fs if not (top == '/usr/share/doc' and f == 'copyright')]
sys.exit(f'{len(bad)} files, e.g. ' + ' '.join(sorted(bad)[:5]) if bad else 0)
"""


def structure_checks(runtime_tools: Iterable[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """(name, argv) of every structure check an image with these ``runtime_tools`` must pass."""
    allowed = set(runtime_tools)
    names = [name for tool, names in TOOLS.items() if tool not in allowed for name in names]
    module = "" if "pip" in allowed else "pip"
    checks = [
        ("no setuid or setgid files", ("python", "-c", _NO_SETUID)),
        ("no man pages, info pages or docs (copyright files excepted)", ("python", "-c", _NO_DOCS)),
    ]
    if names or module:
        left_out = ", ".join(t for t in TOOLS if t not in allowed)
        checks.append((f"no {left_out} (a family that needs one lists it in runtime_tools)", ("python", "-c", _NO_TOOLS, " ".join(names), module)))
    return checks
