"""What this host can run: CUDA GPUs, flash-attn, hub kernels, bitsandbytes, the other quantization libraries.

The loader checks a config against these facts before it calls transformers, so a config the host
cannot run fails with one sentence instead of a kernel error. `probe_host()` touches CUDA; code that
must not (the benchmark's parent process) builds a `HostCapabilities` another way and passes it in.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """One visible CUDA device."""

    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]
    bf16: bool


@dataclass(frozen=True)
class HostCapabilities:
    """Facts about this host that decide whether a knob value can run here."""

    gpus: tuple[GpuInfo, ...] = ()
    flash_attn_version: str | None = None
    flash_attn_3: bool = False
    bitsandbytes_version: str | None = None
    bitsandbytes_error: str | None = None
    bitsandbytes_devices: tuple[str, ...] = field(default_factory=tuple)
    kernels_version: str | None = None  # the `kernels` package (hub kernels), None when not installed
    hub_kernels: tuple[str, ...] = ()  # HUB_ATTENTION_KERNELS found in the local cache at their version
    # (distribution, version) of the installed quantization libraries (loader.quantization.METHODS)
    quant_libraries: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostCapabilities:
        """Inverse of `to_dict` (JSON turns the compute capability into a list; it is a pair again)."""
        gpus = tuple(
            GpuInfo(
                g["name"],
                int(g["total_memory_bytes"]),
                (int(g["compute_capability"][0]), int(g["compute_capability"][1])),
                bool(g["bf16"]),
            )
            for g in data.get("gpus", ())
        )
        return cls(
            gpus=gpus,
            flash_attn_version=data.get("flash_attn_version"),
            flash_attn_3=bool(data.get("flash_attn_3", False)),
            bitsandbytes_version=data.get("bitsandbytes_version"),
            bitsandbytes_error=data.get("bitsandbytes_error"),
            bitsandbytes_devices=tuple(data.get("bitsandbytes_devices", ())),
            kernels_version=data.get("kernels_version"),
            hub_kernels=tuple(data.get("hub_kernels", ())),
            quant_libraries=tuple((str(d), str(v)) for d, v in data.get("quant_libraries", ())),
        )


def _dist_version(name: str) -> str | None:
    # importlib.metadata pulls in email and zipfile (tens of ms); `import loader` should not pay for it
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def flash_attn_packages() -> tuple[str | None, bool]:
    """(flash-attn 2 version or None, whether the FA3 `flash_attn_interface` module is installed).

    Only looks at installed distributions: importing flash_attn would load CUDA kernels.
    """
    fa2 = _dist_version("flash-attn") if importlib.util.find_spec("flash_attn") else None
    fa3 = importlib.util.find_spec("flash_attn_interface") is not None
    return fa2, fa3


def quant_library_versions() -> tuple[tuple[str, str], ...]:
    """(distribution, version) of each quantization library loader.quantization.METHODS names that is
    installed here, from package metadata: importing them takes seconds (torchao) and must not touch
    CUDA in a parent process."""
    from loader.quant_methods import METHODS

    names = sorted({m.library for m in METHODS.values() if m.library})
    found = ((name, _dist_version(name)) for name in names)
    return tuple((name, version) for name, version in found if version is not None)


# Hub attention kernels (repo id -> the major version transformers loads), looked for in the local cache.
HUB_ATTENTION_KERNELS = {"kernels-community/flash-attn2": 4}


def hub_kernel_cached(repo: str, version: int) -> bool:
    """Whether `repo` at `version` is in the kernels cache, as `kernels` finds it offline: the ref `v<N>` of
    the kernel repository and the snapshot it names. Reads files only (importing kernels imports torch)."""
    from huggingface_hub import constants

    root = os.environ.get("KERNELS_CACHE") or constants.HF_HUB_CACHE
    folder = Path(root) / ("kernels--" + repo.replace("/", "--"))
    try:
        commit = (folder / "refs" / f"v{version}").read_text().strip()
    except OSError:
        return False
    return bool(commit) and (folder / "snapshots" / commit).is_dir()


def hub_kernel_facts() -> tuple[str | None, tuple[str, ...]]:
    """(kernels package version or None, the HUB_ATTENTION_KERNELS in the local cache)."""
    version = _dist_version("kernels") if importlib.util.find_spec("kernels") else None
    cached = tuple(repo for repo, v in HUB_ATTENTION_KERNELS.items() if hub_kernel_cached(repo, v))
    return version, cached


def probe_bitsandbytes(cuda: bool) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(version, error, devices bitsandbytes can quantize on). Imports bitsandbytes (and torch)."""
    try:
        import bitsandbytes
        import bitsandbytes.cextension as cext
    except Exception as exc:  # any import failure means "not usable", with its reason
        return None, f"{type(exc).__name__}: {exc}", ()
    devices = ["cpu"]
    if cuda:
        lib = getattr(cext, "lib", None)
        if lib is not None and type(lib).__name__ != "ErrorHandlerMockBNBNativeLibrary":
            devices.insert(0, "cuda")
    return bitsandbytes.__version__, None, tuple(devices)


BnbFacts = tuple[str | None, str | None, tuple[str, ...]]  # probe_bitsandbytes's answer


def probe_host(bitsandbytes: BnbFacts | None = None) -> HostCapabilities:
    """Probe this process's view of the host. Initialises CUDA when a GPU is present.

    `bitsandbytes`: probe_bitsandbytes's answer from another process on this host (importing it takes
    seconds), for a caller that will not use bitsandbytes itself."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cc = (props.major, props.minor)
            gpus.append(GpuInfo(props.name, int(props.total_memory), cc, cc >= (8, 0)))
    fa2, fa3 = flash_attn_packages()
    bnb_version, bnb_error, bnb_devices = bitsandbytes or probe_bitsandbytes(bool(gpus))
    kernels, hub = hub_kernel_facts()
    return HostCapabilities(
        tuple(gpus),
        fa2,
        fa3,
        bnb_version,
        bnb_error,
        bnb_devices,
        kernels_version=kernels,
        hub_kernels=hub,
        quant_libraries=quant_library_versions(),
    )


@functools.cache
def current_host() -> HostCapabilities:
    """`probe_host()` once per process."""
    return probe_host()
