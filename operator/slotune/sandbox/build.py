"""Build the local control plane's binaries from the Go module proxy.

There is no Docker engine and no download site for release binaries here, only the Go module
proxy, so kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok and helm are
compiled with the machine's own Go toolchain into a cache outside the repository:
``$SLOTUNE_CACHE/bin/<k8s-version>/`` (``~/.cache/slotune`` by default).

Run ``python -m slotune.sandbox.build`` to build (or check) everything; other code calls
:func:`ensure_binaries`, which builds only what is missing and needs no network once all seven
binaries are there.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Pinned rather than resolved on every call, so a warm cache needs no network at all. These were
# the newest versions the module proxy served when this was written (v1.34.4 for the 1.34 line);
# override with SLOTUNE_K8S_VERSION etc. to try another.
K8S_VERSION = os.environ.get("SLOTUNE_K8S_VERSION", "v1.34.4")
KWOK_VERSION = os.environ.get("SLOTUNE_KWOK_VERSION", "v0.8.0")
HELM_VERSION = os.environ.get("SLOTUNE_HELM_VERSION", "v3.22.0")

# kubectl too: the machine's own (or PyPI's) is several minors off the apiserver's version.
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*K8S_COMMANDS, "etcd", "kwok", "helm")

# How often a long `go build` reports that it is still alive.
_HEARTBEAT_S = 60.0


class BuildError(RuntimeError):
    """A binary could not be built; the message says why and what to do."""


def cache_root() -> Path:
    env = os.environ.get("SLOTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "slotune"


def bin_dir(k8s_version: str = K8S_VERSION) -> Path:
    return cache_root() / "bin" / k8s_version


def missing_binaries(directory: Path) -> list[str]:
    return [name for name in ALL_BINARIES if not _is_executable(directory / name)]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _log(message: str) -> None:
    print(f"[slotune build] {message}", file=sys.stderr, flush=True)


@dataclass
class _Go:
    """The `go` command with the environment every build here uses."""

    exe: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls) -> _Go:
        exe = shutil.which("go")
        if exe is None:
            raise BuildError(
                "the Go toolchain (`go`) is not on PATH; install Go 1.24 or newer "
                "(the control plane is compiled from the Go module proxy)"
            )
        env = dict(os.environ)
        # Never let `go` fetch another toolchain: only the module proxy is reachable here, and a
        # silent toolchain switch would hide a version problem behind a long download.
        env["GOTOOLCHAIN"] = "local"
        # Static binaries: nothing here needs cgo, and it avoids depending on a C toolchain.
        env["CGO_ENABLED"] = "0"
        # A GOFLAGS such as -mod=vendor from the caller's shell would break the wrapper modules.
        env.pop("GOFLAGS", None)
        return cls(exe=exe, env=env)

    def run(self, args: Sequence[str], cwd: Path | None = None) -> str:
        proc = subprocess.run(
            [self.exe, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"`go {' '.join(args)}` failed:\n{proc.stderr.strip()}")
        return proc.stdout

    def version(self) -> tuple[int, int]:
        out = self.run(["env", "GOVERSION"]).strip()
        match = re.match(r"go(\d+)\.(\d+)", out)
        if match is None:
            raise BuildError(f"cannot parse the Go version {out!r}")
        return int(match.group(1)), int(match.group(2))

    def download(self, module: str, version: str) -> dict[str, str]:
        """`go mod download -json` one module; a clear error when the proxy can't be reached."""
        proc = subprocess.run(
            [self.exe, "mod", "download", "-json", f"{module}@{version}"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            # Run outside any module so a go.mod in the caller's cwd has no say.
            cwd=tempfile.gettempdir(),
        )
        info: dict[str, str] = {}
        with contextlib.suppress(json.JSONDecodeError):
            info = json.loads(proc.stdout)
        error = info.get("Error") or (proc.stderr.strip() if proc.returncode else "")
        if error:
            proxy = self.env.get("GOPROXY") or self.run(["env", "GOPROXY"]).strip()
            raise BuildError(
                f"cannot fetch {module}@{version} from the Go module proxy ({proxy}): {error}\n"
                "check the network, GOPROXY and that the version exists"
            )
        return info

    def build(self, wrapper: Path, package: str, output: Path, ldflags: str, label: str) -> None:
        """`go build` one main package inside a wrapper module, with a heartbeat on stderr."""
        tmp = output.with_name(f".{output.name}.tmp")
        args = [
            self.exe,
            "build",
            # Two cores here: more parallel compiles only add memory pressure.
            "-p",
            "2",
            "-trimpath",
            # The wrapper's go.sum starts empty; -mod=mod lets the build record the sums it needs.
            "-mod=mod",
            "-ldflags",
            ldflags,
            "-o",
            str(tmp),
            package,
        ]
        log_path = wrapper / f"build-{output.name}.log"
        started = time.monotonic()
        with log_path.open("w") as log:
            proc = subprocess.Popen(args, cwd=wrapper, env=self.env, stdout=log, stderr=log)
            while True:
                try:
                    proc.wait(timeout=_HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    _log(f"  ... still building {label}, {time.monotonic() - started:.0f}s")
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-30:]
            raise BuildError(
                f"building {label} failed (exit {proc.returncode}); full log in {log_path}:\n"
                + "\n".join(tail)
            )
        # Rename last so an interrupted build never leaves a half-written binary that a later
        # run would mistake for a finished one.
        tmp.replace(output)


def _read_go_mod(path: str) -> str:
    return Path(path).read_text()


def _go_directive(go_mod: str) -> list[str]:
    """The `go` and `godebug` lines of a go.mod, so the wrapper keeps the upstream defaults.

    GODEBUG defaults follow the *main* module's go version; copying them makes the binaries
    behave as the upstream release build does.
    """
    lines = [ln for ln in go_mod.splitlines() if re.match(r"^(go|godebug) ", ln)]
    if not any(ln.startswith("go ") for ln in lines):
        raise BuildError("upstream go.mod has no go directive")
    return lines


def staging_replacements(k8s_go_mod: str, k8s_version: str) -> dict[str, str]:
    """Map each k8s.io/* module that k8s.io/kubernetes requires at v0.0.0 to its published tag.

    k8s.io/kubernetes develops these "staging" modules in-tree and points them at local paths
    with replace directives, which only work inside its own repository. Each is published on
    its own at v0.<minor>.<patch> for release v1.<minor>.<patch>.
    """
    staging_version = "v0." + k8s_version.removeprefix("v1.")
    modules = re.findall(
        r"^\s*(?:require\s+)?(k8s\.io/[\w.\-/]+) v0\.0\.0(?:\s|$)", k8s_go_mod, flags=re.M
    )
    if not modules:
        raise BuildError("found no k8s.io/* staging modules in k8s.io/kubernetes' go.mod")
    return {module: staging_version for module in sorted(set(modules))}


def required_version(go_mod: str, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod, flags=re.M)
    if match is None:
        raise BuildError(f"{module} is not required by the go.mod at hand")
    return match.group(1)


def _wrapper_go_mod(
    name: str, header: list[str], requires: dict[str, str], replaces: dict[str, str]
) -> str:
    lines = [
        "// Generated by slotune.sandbox.build: a module whose only purpose is to build an",
        "// upstream command whose own go.mod replaces its siblings with local paths.",
        f"module slotune.local/build/{name}",
        "",
        *header,
        "",
        "require (",
        *(f"\t{mod} {ver}" for mod, ver in requires.items()),
        ")",
    ]
    if replaces:
        lines += ["", "replace (", *(f"\t{m} => {m} {v}" for m, v in replaces.items()), ")"]
    return "\n".join(lines) + "\n"


def _write_wrapper(directory: Path, go_mod: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "go.mod"
    # Rewriting an identical go.mod would make go re-resolve; keep the old one (and its go.sum).
    if not target.exists() or target.read_text() != go_mod:
        target.write_text(go_mod)
        (directory / "go.sum").unlink(missing_ok=True)


def _k8s_ldflags(version: str) -> str:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if match is None:
        raise BuildError(f"unexpected Kubernetes version {version!r}")
    major, minor = match.groups()
    # Without these the binaries report v0.0.0: clients (helm, kubectl) then refuse or warn,
    # and the apiserver's /version is useless for checks.
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _helm_ldflags(helm_go_mod: str, helm_version: str) -> str:
    # Mirrors helm's Makefile: the default Kubernetes version that `helm template` and
    # `helm lint` assume is derived from the client-go helm was built with (v0.X -> 1.X).
    # Left unset, helm falls back to an old built-in default.
    client_go = required_version(helm_go_mod, "k8s.io/client-go")
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", client_go)
    if match is None:
        raise BuildError(f"unexpected client-go version {client_go!r} in helm's go.mod")
    major, minor = int(match.group(1)) + 1, match.group(2)
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={helm_version}"]
    flags += ["-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


@dataclass(frozen=True)
class _Target:
    name: str
    wrapper: str  # which wrapper module builds it
    package: str


def _targets() -> list[_Target]:
    return [
        *(_Target(cmd, "kubernetes", f"k8s.io/kubernetes/cmd/{cmd}") for cmd in K8S_COMMANDS),
        # server/v3's main.go is the etcd binary (the repository root's module only adds etcdctl
        # and etcdutl).
        _Target("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
        _Target("kwok", "kwok", "sigs.k8s.io/kwok/cmd/kwok"),
        _Target("helm", "helm", "helm.sh/helm/v3/cmd/helm"),
    ]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds, e.g. two pytest sessions started at once on a cold cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Builder:
    def __init__(self, go: _Go, out_dir: Path) -> None:
        self.go = go
        self.out_dir = out_dir
        self.src = cache_root() / "src" / K8S_VERSION
        self._wrappers: dict[str, tuple[Path, str]] = {}

    def _wrapper(self, kind: str) -> tuple[Path, str]:
        """The wrapper module directory and ldflags for one kind of target, made on first use."""
        if kind not in self._wrappers:
            self._wrappers[kind] = getattr(self, f"_prepare_{kind}")()
        return self._wrappers[kind]

    def _prepare_kubernetes(self) -> tuple[Path, str]:
        info = self.go.download("k8s.io/kubernetes", K8S_VERSION)
        k8s_mod = _read_go_mod(info["GoMod"])
        go_mod = _wrapper_go_mod(
            "kubernetes",
            _go_directive(k8s_mod),
            {"k8s.io/kubernetes": K8S_VERSION},
            staging_replacements(k8s_mod, K8S_VERSION),
        )
        directory = self.src / "kubernetes"
        _write_wrapper(directory, go_mod)
        return directory, _k8s_ldflags(K8S_VERSION)

    def _prepare_etcd(self) -> tuple[Path, str]:
        # The etcd that this Kubernetes release is tested against, not the newest one.
        k8s_mod = _read_go_mod(self.go.download("k8s.io/kubernetes", K8S_VERSION)["GoMod"])
        version = required_version(k8s_mod, "go.etcd.io/etcd/server/v3")
        etcd_mod = _read_go_mod(self.go.download("go.etcd.io/etcd/server/v3", version)["GoMod"])
        # server/v3 replaces its sibling modules (api, client, pkg) with ../ paths.
        siblings = re.findall(r"^\s*(go\.etcd\.io/etcd/[\w/]+/v3) => \.\./", etcd_mod, flags=re.M)
        go_mod = _wrapper_go_mod(
            "etcd",
            _go_directive(etcd_mod),
            {"go.etcd.io/etcd/server/v3": version},
            {module: version for module in siblings},
        )
        directory = self.src / "etcd"
        _write_wrapper(directory, go_mod)
        pkg = "go.etcd.io/etcd/api/v3/version"
        return directory, f"-s -w -X {pkg}.GitSHA=v{version.removeprefix('v')}"

    def _prepare_kwok(self) -> tuple[Path, str]:
        kwok_mod = _read_go_mod(self.go.download("sigs.k8s.io/kwok", KWOK_VERSION)["GoMod"])
        go_mod = _wrapper_go_mod(
            "kwok", _go_directive(kwok_mod), {"sigs.k8s.io/kwok": KWOK_VERSION}, {}
        )
        directory = self.src / "kwok"
        _write_wrapper(directory, go_mod)
        # kwok's version constant already matches its tag; nothing to stamp.
        return directory, "-s -w"

    def _prepare_helm(self) -> tuple[Path, str]:
        helm_mod = _read_go_mod(self.go.download("helm.sh/helm/v3", HELM_VERSION)["GoMod"])
        go_mod = _wrapper_go_mod(
            "helm", _go_directive(helm_mod), {"helm.sh/helm/v3": HELM_VERSION}, {}
        )
        directory = self.src / "helm"
        _write_wrapper(directory, go_mod)
        return directory, _helm_ldflags(helm_mod, HELM_VERSION)

    def build(self, targets: list[_Target]) -> dict[str, float]:
        timings: dict[str, float] = {}
        for index, target in enumerate(targets, start=1):
            label = f"{target.name} ({index}/{len(targets)})"
            started = time.monotonic()
            _log(f"building {label}...")
            wrapper, ldflags = self._wrapper(target.wrapper)
            self.go.build(wrapper, target.package, self.out_dir / target.name, ldflags, label)
            timings[target.name] = time.monotonic() - started
            _log(f"built {target.name} in {timings[target.name]:.1f}s")
        return timings


def ensure_binaries(force: bool = False) -> Path:
    """Return the directory holding all six binaries, building whichever are missing."""
    out_dir = bin_dir()
    if not force and not missing_binaries(out_dir):
        return out_dir
    with _locked(cache_root() / "build.lock"):
        # Another process may have finished the build while we waited for the lock.
        targets = [t for t in _targets() if force or not _is_executable(out_dir / t.name)]
        if not targets:
            return out_dir
        go = _Go.find()
        if go.version() < (1, 24):
            raise BuildError(f"Go 1.24 or newer is needed to build Kubernetes {K8S_VERSION}")
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        names = ", ".join(t.name for t in targets)
        _log(f"building {names} into {out_dir} (a cold build takes many minutes)")
        timings = _Builder(go, out_dir).build(targets)
        total = time.monotonic() - started
        _log(f"done in {total:.1f}s")
        _record(out_dir, timings, total)
    return out_dir


def _record(out_dir: Path, timings: dict[str, float], total: float) -> None:
    """Keep the versions and the last build's timings next to the binaries, for reports."""
    manifest = out_dir / "build.json"
    data = {
        "kubernetes": K8S_VERSION,
        "kwok": KWOK_VERSION,
        "helm": HELM_VERSION,
        "last_build": {
            "seconds": round(total, 1),
            "per_binary": {k: round(v, 1) for k, v in timings.items()},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    manifest.write_text(json.dumps(data, indent=2) + "\n")


def newer_versions() -> dict[str, tuple[str, str]]:
    """Pinned versions for which the module proxy serves something newer: {module: (pin, new)}.

    Kubernetes is compared within its minor line (v1.34.x); kwok and helm against their latest.
    """
    go = _Go.find()
    pins = {
        "k8s.io/kubernetes": (K8S_VERSION, K8S_VERSION.rsplit(".", 1)[0]),
        "sigs.k8s.io/kwok": (KWOK_VERSION, "latest"),
        "helm.sh/helm/v3": (HELM_VERSION, "latest"),
    }
    newer: dict[str, tuple[str, str]] = {}
    for module, (pin, query) in pins.items():
        out = go.run(["list", "-m", "-json", f"{module}@{query}"], cwd=Path(tempfile.gettempdir()))
        latest = str(json.loads(out)["Version"])
        if latest != pin:
            newer[module] = (pin, latest)
    return newer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slotune.sandbox.build",
        description="Build the local control plane binaries into the slotune cache.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even what exists")
    parser.add_argument("--print-dir", action="store_true", help="only print the bin dir")
    parser.add_argument(
        "--check-latest",
        action="store_true",
        help="report pinned versions the module proxy has newer releases of (builds nothing)",
    )
    args = parser.parse_args(argv)
    if args.print_dir:
        print(bin_dir())
        return 0
    try:
        if args.check_latest:
            newer = newer_versions()
            for module, (pin, latest) in newer.items():
                print(f"{module}: pinned {pin}, newest {latest}")
            if not newer:
                print("all pins are the newest the module proxy serves")
            return 0
        directory = ensure_binaries(force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
