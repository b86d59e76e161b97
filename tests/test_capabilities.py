"""bench.plan.capabilities: NVML facts (fake and real), CUDA_VISIBLE_DEVICES, knob support, `loadbench env`."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from bench.plan import capabilities as cap
from loader.attention import attention_unsupported_reason
from loader.host import HostCapabilities

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa1111-0000", "mem": 80 * GIB, "cc": (9, 0)}
T4 = {"name": "Tesla T4", "uuid": "GPU-bbbb2222-0000", "mem": 15 * GIB, "cc": (7, 5)}


class FakeNvml:
    """pynvml's function names over a list of GPUs; handles are indices."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict[str, Any]], init_error: str | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.gpus[h]["name"]

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return self.gpus[h]["uuid"].encode()  # old nvidia-ml-py returns bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.gpus[h]["mem"], free=self.gpus[h]["mem"], used=0)

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return self.gpus[h]["cc"]

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000


def fake_child(cuda: bool) -> dict[str, Any]:
    """What the bitsandbytes child reports, without spending seconds importing torch."""
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    return {"bitsandbytes_version": "0.50.2", "bitsandbytes_devices": devices, "bitsandbytes_backend": "CUDA"}


@pytest.fixture
def fake_probe(monkeypatch: pytest.MonkeyPatch):
    """probe() over a fake NVML, with the child process replaced and CUDA_VISIBLE_DEVICES unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cap, "_start_child", lambda cuda: cuda)
    monkeypatch.setattr(cap, "_finish_child", fake_child)

    def run(gpus: list[dict[str, Any]], init_error: str | None = None) -> cap.Capabilities:
        return cap.probe(nvml_module=FakeNvml(gpus, init_error))

    return run


@pytest.fixture(scope="module")
def real_caps() -> tuple[cap.Capabilities, float]:
    start = time.perf_counter()
    caps = cap.probe()
    return caps, time.perf_counter() - start


# -- fake NVML ---------------------------------------------------------------------------------------


def test_fake_h100_and_t4(fake_probe) -> None:
    caps = fake_probe([H100, T4])
    assert caps.nvml and caps.nvml_error is None
    assert caps.driver_version == "580.159.04" and caps.cuda_driver_version == "13.0"
    assert [(g["name"], g["compute_capability"], g["bf16"]) for g in caps.gpus_detail] == [
        (H100["name"], "9.0", True),
        (T4["name"], "7.5", False),
    ]
    assert caps.gpus_detail[0]["uuid"] == H100["uuid"]
    assert caps.gpus_detail[0]["memory_total_bytes"] == 80 * GIB
    assert caps.gpus_detail[0]["power_limit_w"] is None  # the fake has no power query: None, not a failure
    assert [g.compute_capability for g in caps.host.gpus] == [(9, 0), (7, 5)]
    assert caps.host.bitsandbytes_devices == ("cuda", "cpu")


def test_flash_attention_2_on_h100_needs_the_package(fake_probe) -> None:
    caps = fake_probe([H100, T4])
    row = _row(caps, "attention", "flash_attention_2")
    assert not row["ok"]
    assert "flash-attn package, which is not installed" in row["reason"]
    assert row["reason"] == attention_unsupported_reason("flash_attention_2", "bfloat16", caps.host)
    with_flash = dataclasses.replace(caps, host=dataclasses.replace(caps.host, flash_attn_version="2.7.4"))
    assert _row(with_flash, "attention", "flash_attention_2")["ok"]


def test_t4_only_host_gets_the_compute_capability_sentence(fake_probe) -> None:
    caps = fake_probe([T4])
    reason = _row(caps, "attention", "flash_attention_2")["reason"]
    assert reason == "flash_attention_2 needs a CUDA GPU of compute capability 8.0+; Tesla T4 is 7.5."
    assert "no bf16" in _row(caps, "dtype", "bfloat16")["reason"]
    assert _row(caps, "dtype", "float16")["ok"] and _row(caps, "device", "cuda")["ok"]


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        ("1", [T4["name"]]),
        ("1,0", [T4["name"], H100["name"]]),
        ("0,7,1", [H100["name"]]),  # the first ordinal naming no GPU ends the list, as in CUDA
        ("1,1", []),  # a repeated GPU hides all, as in CUDA
        (T4["uuid"], [T4["name"]]),
        ("GPU-bbbb", [T4["name"]]),  # unique UUID prefix
        (f"{T4['uuid']},{H100['uuid']}", [T4["name"], H100["name"]]),
        ("", []),
    ],
)
def test_cuda_visible_devices(
    fake_probe, monkeypatch: pytest.MonkeyPatch, visible: str, names: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    caps = fake_probe([H100, T4])
    assert [g["name"] for g in caps.gpus_detail] == names
    assert [g["index"] for g in caps.gpus_detail] == list(range(len(names)))  # CUDA ordinals in this process
    assert caps.host.cuda is bool(names)
    assert ("cuda" in caps.host.bitsandbytes_devices) is bool(names)


def test_cuda_visible_devices_uuid_form_keeps_nvml_index(fake_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", T4["uuid"])
    (gpu,) = fake_probe([H100, T4]).gpus_detail
    assert (gpu["index"], gpu["nvml_index"]) == (0, 1)


def test_nvml_init_failure_is_a_reason(fake_probe) -> None:
    caps = fake_probe([H100], init_error="Driver Not Loaded")
    assert caps.nvml is False
    assert caps.nvml_error == "NVMLError: Driver Not Loaded"
    assert caps.gpus_detail == () and not caps.host.cuda
    assert caps.host.bitsandbytes_devices == ("cpu",)


def test_nvml_is_shut_down() -> None:
    fake = FakeNvml([H100])
    cap.nvml_facts(fake)
    assert fake.shutdown_calls == 1


def test_dict_round_trip(fake_probe) -> None:
    caps = fake_probe([H100, T4])
    data = json.loads(json.dumps(caps.to_dict()))
    assert cap.Capabilities.from_dict(data) == caps
    assert cap.Capabilities.from_dict({**data, "from_a_newer_writer": 1}) == caps


def test_cpu_flags_from_cpuinfo() -> None:
    text = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 sse\n"
    assert cap.cpu_model_and_flags(text) == ("Xeon", ("avx2", "avx512f", "amx_bf16"))


def test_child_failure_becomes_a_bitsandbytes_error() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('boom')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = cap._finish_child(proc)
    assert out == {"bitsandbytes_error": "the bitsandbytes probe process exited 1: boom"}


# -- the real host -----------------------------------------------------------------------------------


def test_real_probe(real_caps: tuple[cap.Capabilities, float]) -> None:
    caps, _seconds = real_caps
    assert caps.cpu_cores_logical >= 1 and caps.memory_bytes > 0 and caps.cpu_model
    installed = _installed("bitsandbytes")
    assert caps.host.bitsandbytes_version == installed, caps.host.bitsandbytes_error
    assert ("cpu" in caps.host.bitsandbytes_devices) is (installed is not None)
    assert caps.torch_version and caps.torch_version.split("+")[0] == _installed("torch").split("+")[0]
    if not caps.nvml:
        assert caps.nvml_error and caps.gpus_detail == () and not caps.host.cuda


def test_real_probe_does_not_initialise_cuda(real_caps: tuple[cap.Capabilities, float]) -> None:
    import torch

    assert not torch.cuda.is_initialized()


@pytest.mark.slow
def test_probe_in_a_fresh_process_imports_neither_torch_nor_bitsandbytes() -> None:
    code = (
        "import sys, bench.plan.capabilities as c; c.probe_cached(); c.probe_cached(); "
        "print(sorted(m for m in ('torch', 'bitsandbytes', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_real_gpus_match_torch(real_caps: tuple[cap.Capabilities, float]) -> None:
    caps, _ = real_caps
    if not caps.nvml or not caps.gpus_detail:
        pytest.skip("no NVIDIA driver/GPU on this host")
    code = (
        "import json, torch; n = torch.cuda.device_count(); print(json.dumps([[torch.cuda.get_device_name(i), "
        "'%d.%d' % torch.cuda.get_device_capability(i)] for i in range(n)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[g["name"], g["compute_capability"]] for g in caps.gpus_detail]


def test_knob_support_on_this_host(real_caps: tuple[cap.Capabilities, float]) -> None:
    caps, _ = real_caps
    if caps.host.cuda:
        pytest.skip("checks the CPU-only host's rows")
    assert _row(caps, "attention", "flex_attention (training)")["reason"] == attention_unsupported_reason(
        "flex_attention", "bfloat16", caps.host, training=True
    )
    assert _row(caps, "attention", "eager")["ok"] and _row(caps, "attention", "sdpa")["ok"]
    assert _row(caps, "attention", "flex_attention")["ok"]
    for value in ("none", "bnb-8bit", "bnb-4bit-nf4", "bnb-4bit-fp4", "bnb-4bit-nf4-dq"):
        assert _row(caps, "quantization", value)["ok"], value
    assert _row(caps, "device", "cuda")["reason"] == "device='cuda' needs a CUDA GPU; this host has none."
    knobs = {r["knob"] for r in cap.knob_support(caps)}
    assert knobs == {"dtype", "quantization", "attention", "decode", "device"}


def test_knob_support_without_bitsandbytes() -> None:
    host = HostCapabilities(bitsandbytes_error="ModuleNotFoundError: No module named 'bitsandbytes'")
    caps = dataclasses.replace(_minimal_caps(), host=host)
    reason = _row(caps, "quantization", "bnb-4bit-nf4")["reason"]
    assert reason.startswith("quantization='bnb-4bit' needs bitsandbytes, which cannot be imported here")
    assert _row(caps, "quantization", "none")["ok"]


def test_render_env(real_caps: tuple[cap.Capabilities, float]) -> None:
    caps, _ = real_caps
    console = Console(record=True, width=120)
    cap.render_env(caps, console)
    text = re.sub(r"[\s│]", "", console.export_text())  # undo rich's wrapping inside table cells
    assert "canrun" in text
    flash_reason = _row(caps, "attention", "flash_attention_2")["reason"]
    assert flash_reason is None or re.sub(r"\s", "", flash_reason) in text
    assert str(caps.host.bitsandbytes_version or caps.host.bitsandbytes_error).replace(" ", "") in text


def test_render_env_gpus(fake_probe) -> None:
    console = Console(record=True, width=120)
    cap.render_env(fake_probe([H100, T4]), console)
    text = console.export_text()
    assert "NVIDIA H100 80GB HBM3, 80.0 GiB, cc 9.0, bf16" in text
    assert "Tesla T4, 15.0 GiB, cc 7.5, no bf16" in text
    assert "CUDA driver" in text and "13.0" in text
    assert "pipinstall'loadbench[flash]'" in re.sub(r"[\s│]", "", text)  # printed as text, not rich markup


def test_main_env_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    caps = _minimal_caps()
    monkeypatch.setattr(cap, "probe_cached", lambda: caps)
    assert cap.main_env(SimpleNamespace(json=True)) == 0
    assert cap.Capabilities.from_dict(json.loads(capsys.readouterr().out)) == caps


# -- helpers -----------------------------------------------------------------------------------------


def _row(caps: cap.Capabilities, knob: str, value: str) -> dict[str, Any]:
    (row,) = [r for r in cap.knob_support(caps) if r["knob"] == knob and r["value"] == value]
    return row


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _minimal_caps() -> cap.Capabilities:
    return cap.Capabilities(
        host=HostCapabilities(),
        cpu_model="test cpu",
        cpu_cores_physical=None,
        cpu_cores_logical=1,
        cpu_flags=(),
        memory_bytes=GIB,
        nvml=False,
        nvml_error="NVMLError: test",
        driver_version=None,
        cuda_driver_version=None,
        gpus_detail=(),
        bitsandbytes_backend=None,
        peft_version=None,
        torch_version=None,
        transformers_version=None,
        accelerate_version=None,
        flash_attn_version=None,
        flash_attn_3=False,
        python_version="3.11",
        platform="test",
        hostname="test",
    )
