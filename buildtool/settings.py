"""The settings of a run: built once from flags, the environment and fleet.toml, then frozen.

Precedence: a flag, then the environment, then fleet.toml's [settings], then
``buildtool/defaults.toml``. The environment arrives as a mapping; nothing below this module
reads ``os.environ``. The library (pipeline, bench, tests) takes a :class:`Settings`; only the
command line builds one from the process environment.

=========================  ==========================================================
FLEET_REGISTRY             registry host[:port] (flag ``--registry``)
FLEET_ORG                  organisation below the registry (flag ``--org``)
FLEET_REGISTRY_USER        user name for the registry's Basic auth or token exchange (default: fleet)
FLEET_REGISTRY_TOKEN       password or token for it (ghcr.io: GITHUB_TOKEN)
FLEET_STATE_DIR            state dir: contexts, logs, root filesystems, reports
FLEET_REGISTRY_STORAGE     storage of a local registry the toolkit starts
FLEET_PIP_CA               CA bundle for pip inside builds (BuildKit secret ``pip_ca``)
FLEET_PIP_INDEX_URL        index URL with its token (BuildKit secret ``pip_index``, never a layer)
FORCE_IMAGE_TAG            the release ``rollback`` points ``latest`` at
FLEET_VULN_POLICY          auto (default), enforce or warn (flag ``--vuln-policy``)
FLEET_TRIVY_DB             a prepared Trivy database folder (trivy.db + metadata.json)
FLEET_TRIVY_DB_REPOSITORY  where to download Trivy's database from (refreshed daily)
FLEET_STEP_TIME_LIMIT      seconds every build, check or push step may take (default: time_limit_minutes)
FLEET_MIN_FREE_GB          GB free each disk a build writes to needs before it starts (default 10;
                           0 turns the check off): short of it, the toolkit frees its own leftovers,
                           then refuses (exit code 17)
FLEET_CACHE_MODE           what a build exports to the registry cache: min (the image's own layers;
                           default) or max (every stage's too: for runners that start with no cache)
GITHUB_API_URL             GitHub's REST API (default https://api.github.com): prune deletes there on ghcr.io
GITHUB_ACTIONS, GITHUB_REF under GitHub Actions, only a run of refs/heads/main releases: any other
                           ref (or none) builds into its own org, ORG/branch-<hash of the ref>, with
                           its own cache, and publish, rollback and prune refuse
=========================  ==========================================================
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from buildtool.core.errors import ConfigError, Problem, RefError
from buildtool.core.refs import ImageRef, cache_ref
from buildtool.model.schema import CONTROL, IMAGE_RE, ORG_RE, REGISTRY_RE, RELEASE_TAG_RE
from buildtool.model.types import Fleet

PIP_INDEX_VAR = "FLEET_PIP_INDEX_URL"
RELEASE_REF = "refs/heads/main"  # the one ref whose CI runs move release tags, roll back and prune


@cache
def defaults() -> dict[str, object]:
    return tomllib.loads(resources.files("buildtool").joinpath("defaults.toml").read_text())


@dataclass(frozen=True, kw_only=True)
class Settings:
    root: Path  # the repository (fleet.toml)
    registry: str
    org: str
    registry_token: str | None
    registry_user: str
    state_dir: Path
    registry_storage: Path
    ca_bundle: Path  # reaches builds only as the BuildKit secret "pip_ca"
    pip_index_env: str  # name of the variable holding an index URL with a token ("" if unset): secret "pip_index"
    force_image_tag: str
    source_date_epoch: int
    jobs: int
    health_timeout: float
    step_time_limit: float = 0.0  # seconds every step may take (FLEET_STEP_TIME_LIMIT); 0: its family's time_limit_minutes
    vuln_policy: str  # auto: enforce where a database is configured, else secrets only | enforce | warn
    trivy_db: Path | None  # a prepared database folder
    trivy_db_repository: str  # a database repository to download from ("" = none)
    keep_releases: int = 5  # release tags `prune` keeps per image
    build_cache_keep: str = "20gb"  # BuildKit cache `prune` leaves
    min_free_gb: int = 0  # GB each disk a build writes to must have free when it starts (0: not checked)
    scan: bool = True  # the supply-chain gate runs (tests of other things may switch it off)
    cache: bool = True  # False: every image from scratch, no BuildKit or registry cache (``repro``)
    cache_mode: str = "min"  # registry cache export: "min" (the image's layers) or "max" (every stage's)
    today: dt.date = dt.date(1970, 1, 1)  # the date allowlist expiries are read against
    github_api_url: str = "https://api.github.com"  # GITHUB_API_URL: the Packages API deletes on ghcr.io
    ci_ref: str = ""  # under GitHub Actions: the ref the run is for ("" outside Actions)
    may_release: bool = True  # False for a CI run of any ref but RELEASE_REF: its org is its own

    def require_release(self, action: str) -> None:
        """Refuse ``action`` (it moves or deletes release tags) in a CI run of any ref but main."""
        if not self.may_release:
            raise RefError(f"{action} runs only for {RELEASE_REF}; this run is for {self.ci_ref or 'an unknown ref'!r}, whose images "
                           f"went to its own org {self.org!r}. Nothing was moved or deleted; run it from main")  # fmt: skip

    def ref(self, repository: str, tag: str = "", digest: str = "") -> ImageRef:
        return ImageRef(registry=self.registry, org=self.org, repository=repository, tag=tag, digest=digest)

    def cache_ref(self, repository: str) -> ImageRef:
        return cache_ref(self.registry, self.org, repository)

    def secrets(self) -> list[str]:
        """BuildKit secrets of every build: the CA bundle, and the index URL when one is set."""
        out = [f"id=pip_ca,src={self.ca_bundle}"]
        if self.pip_index_env:
            out.append(f"id=pip_index,env={self.pip_index_env}")
        return out


def from_sources(fleet: Fleet, env: Mapping[str, str], **flags: object) -> Settings:
    """Settings of a run on ``fleet``: ``flags`` (None where not given) over ``env`` over the fleet
    over the defaults. Invalid values raise :class:`ConfigError` naming the variable."""
    d = defaults()
    problems: list[Problem] = []

    def pick(flag: str, var: str, fallback: str, regex: re.Pattern[str], what: str) -> str:
        """The flag, else the variable, else ``fallback`` (already valid); a bad value is a problem."""
        if flags.get(flag):
            value, file, key = str(flags[flag]), "command line", f"--{flag}"
        elif env.get(var):
            value, file, key = env[var], "environment", var
        else:
            return fallback
        if not regex.fullmatch(value):
            problems.append(Problem(file=file, key=key, message=f"{value!r} is not {what}; fix or unset it"))
        return value

    registry = pick("registry", "FLEET_REGISTRY", fleet.settings.registry, REGISTRY_RE, "a registry host[:port]")
    org = pick("org", "FLEET_ORG", fleet.settings.org, ORG_RE, "an image path of lowercase letters, digits, '.', '_', '-' and '/'")
    force = pick("force_image_tag", "FORCE_IMAGE_TAG", "", RELEASE_TAG_RE, "a release tag (YYYYMMDD-GITSHA, as publish writes it)")
    policy = pick("vuln_policy", "FLEET_VULN_POLICY", "auto", re.compile("auto|enforce|warn"), "a policy: auto, enforce or warn")
    db_repo = pick("trivy_db_repository", "FLEET_TRIVY_DB_REPOSITORY", "", IMAGE_RE, "an image reference like ghcr.io/aquasecurity/trivy-db:2")
    cache_mode = pick("cache_mode", "FLEET_CACHE_MODE", str(d["cache_mode"]), re.compile("min|max"), "a cache mode: min or max")
    limit = env.get("FLEET_STEP_TIME_LIMIT", "")
    if limit and not re.fullmatch(r"[1-9][0-9]{0,5}", limit):
        problems.append(Problem(file="environment", key="FLEET_STEP_TIME_LIMIT", message=f"{limit!r} is not a number of seconds (1-999999); fix or unset it"))
    min_free = env.get("FLEET_MIN_FREE_GB", "")
    if min_free and not re.fullmatch(r"[0-9]{1,5}", min_free):
        problems.append(Problem(file="environment", key="FLEET_MIN_FREE_GB", message=f"{min_free!r} is not a number of GB (0-99999); fix or unset it"))
    for var in ("FLEET_REGISTRY_TOKEN", "FLEET_REGISTRY_USER", PIP_INDEX_VAR):
        if CONTROL.search(env.get(var, "")):
            problems.append(Problem(file="environment", key=var, message=f"holds a line break or control character (value not shown); fix or unset {var}"))
    if problems:
        raise ConfigError(problems)
    ci_ref, may_release = "", True
    if env.get("GITHUB_ACTIONS") == "true":
        ci_ref = env.get("GITHUB_REF", "")
        may_release = ci_ref == RELEASE_REF
        if not may_release:  # a branch's identity tags and cache never land where main reads them
            org = f"{org}/branch-{hashlib.sha256(ci_ref.encode()).hexdigest()[:12]}"
    return Settings(
        root=fleet.root,
        registry=registry,
        org=org,
        registry_token=env.get("FLEET_REGISTRY_TOKEN") or None,
        registry_user=env.get("FLEET_REGISTRY_USER") or "fleet",
        state_dir=Path(env.get("FLEET_STATE_DIR") or fleet.root / str(d["state_dir"])),
        registry_storage=Path(env.get("FLEET_REGISTRY_STORAGE") or str(d["registry_storage"])),
        ca_bundle=Path(env.get("FLEET_PIP_CA") or str(d["ca_bundle"])),
        pip_index_env=PIP_INDEX_VAR if env.get(PIP_INDEX_VAR) else "",
        force_image_tag=force,
        source_date_epoch=fleet.settings.source_date_epoch,
        jobs=int(flags.get("jobs") or d["jobs"]),  # type: ignore[call-overload]
        health_timeout=float(d["health_timeout"]),  # type: ignore[arg-type]
        step_time_limit=float(limit) if limit and not problems else 0.0,
        vuln_policy=policy,
        trivy_db=Path(env["FLEET_TRIVY_DB"]) if env.get("FLEET_TRIVY_DB") else None,
        trivy_db_repository=db_repo,
        today=dt.datetime.now(dt.UTC).date(),
        keep_releases=int(flags.get("keep_releases") or d["keep_releases"]),  # type: ignore[call-overload]
        build_cache_keep=str(d["build_cache_keep"]),
        min_free_gb=int(min_free or d["min_free_gb"]),  # type: ignore[call-overload]
        cache_mode=cache_mode,
        github_api_url=env.get("GITHUB_API_URL") or "https://api.github.com",
        ci_ref=ci_ref,
        may_release=may_release,
    )
