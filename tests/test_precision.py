"""``train.precision: auto``: bfloat16 only where the hardware runs it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from mritumor.engine.precision import Hardware, choose_precision, cpu_bf16_flags, detect_hardware

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile avx512_bf16\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx2\n"
ARM = "Features\t: fp asimd evtstrm aes sha2\n"

CPU_AVX2 = Hardware(gpu_capabilities=(), cpu_bf16_flags=())
CPU_BF16 = Hardware(gpu_capabilities=(), cpu_bf16_flags=("avx512_bf16",))
AMPERE = Hardware(gpu_capabilities=((8, 0),), cpu_bf16_flags=())
TURING = Hardware(gpu_capabilities=((7, 5),), cpu_bf16_flags=("avx512_bf16",))


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (ZEN4, ("avx512_bf16",)),
        (SAPPHIRE_RAPIDS, ("avx512_bf16", "amx_bf16")),
        (AVX2_ONLY, ()),
        (ARM, ()),
        ("", ()),
        # A flag is a whole word: avx512_bf16x would be another flag.
        ("flags : avx512_bf16x amx_bf16_lite\n", ()),
    ],
)
def test_cpu_bf16_flags_are_read_from_cpuinfo(cpuinfo: str, expected: tuple[str, ...]) -> None:
    assert cpu_bf16_flags(cpuinfo) == expected


@pytest.mark.parametrize(
    ("hardware", "policy"),
    [
        (CPU_AVX2, "float32"),
        (CPU_BF16, "mixed_bfloat16"),
        (AMPERE, "mixed_bfloat16"),
        (TURING, "mixed_float16"),  # the GPU decides, not the host CPU's flags
        (Hardware(((9, 0), (7, 0)), ()), "mixed_float16"),  # every GPU must have bf16
    ],
)
def test_auto_picks_what_the_hardware_runs_natively(hardware: Hardware, policy: str) -> None:
    choice = choose_precision("auto", hardware)
    assert choice.policy == policy
    assert choice.requested == "auto"
    assert choice.warning is None


def test_the_choice_says_why() -> None:
    assert choose_precision("auto", CPU_BF16).describe() == (
        "mixed_bfloat16 (auto: CPU with native bfloat16: avx512_bf16)"
    )
    assert choose_precision("auto", CPU_AVX2).describe() == (
        "float32 (auto: CPU without native bfloat16)"
    )


def test_forcing_bf16_on_a_cpu_that_emulates_it_warns_with_the_slowdown() -> None:
    choice = choose_precision("mixed_bfloat16", CPU_AVX2)
    assert choice.policy == "mixed_bfloat16"  # forced means forced
    assert choice.warning is not None
    assert "emulated" in choice.warning
    assert "10x slower than float32" in choice.warning
    assert "avx512_bf16 or amx_bf16" in choice.warning
    assert "\n" not in choice.warning
    assert choice.describe() == "mixed_bfloat16 (requested: CPU, no native bfloat16)"


def test_forcing_float16_on_any_cpu_warns() -> None:
    for hardware in (CPU_AVX2, CPU_BF16):
        warning = choose_precision("mixed_float16", hardware).warning
        assert warning is not None and "10x slower" in warning


@pytest.mark.parametrize(
    ("policy", "hardware"),
    [
        ("mixed_bfloat16", CPU_BF16),
        ("float32", CPU_AVX2),
        ("mixed_float16", TURING),
        ("mixed_bfloat16", AMPERE),
    ],
)
def test_no_warning_where_the_forced_policy_is_native(policy: str, hardware: Hardware) -> None:
    assert choose_precision(policy, hardware).warning is None


def test_detect_hardware_reads_gpu_capabilities() -> None:
    hardware = detect_hardware([{"compute_capability": (8, 6)}, {"device_name": "no capability"}])
    assert hardware.gpu_capabilities == ((8, 6), (0, 0))
    # A GPU that does not say what it is counts as one without bf16.
    assert choose_precision("auto", hardware).policy == "mixed_float16"


def test_training_warns_once_when_bf16_is_forced_on_an_emulating_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import keras

    from mritumor.config.loading import load_settings
    from mritumor.engine import precision, training

    monkeypatch.setattr(precision, "detect_hardware", lambda: CPU_AVX2)
    settings = load_settings(None, {"train.precision": "mixed_bfloat16"}).settings
    try:
        with pytest.warns(UserWarning, match="emulated: expect training about 10x slower") as seen:
            choice = training.configure_runtime(settings)
        assert len(seen) == 1
        assert choice.policy == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_resumed_model_keeps_the_precision_its_layers_were_saved_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keras restores each layer's policy, not the model's: a bf16 run resumed where auto
    picks float32 still trains in bf16, and on a CPU that emulates it, says so."""
    import warnings

    import keras

    from mritumor.config.loading import load_settings
    from mritumor.engine import training
    from mritumor.models.classifier import build_classifier
    from mritumor.run.model_file import load_model

    settings = load_settings(
        None, {"model.backbone": "small_cnn", "model.weights": "none", "data.image_size": 32}
    ).settings
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    build_classifier(settings).save(tmp_path / "last.keras")
    keras.mixed_precision.set_global_policy("float32")
    model = load_model(tmp_path / "last.keras")
    monkeypatch.setattr(training, "detect_hardware", lambda: CPU_AVX2)
    chosen = choose_precision("auto", CPU_AVX2)
    assert chosen.policy == "float32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = training._kept_precision(model, chosen)
    assert (kept.policy, kept.requested) == ("mixed_bfloat16", "saved")
    assert kept.describe().startswith("mixed_bfloat16 (as saved in the model: ")
    assert [str(w.message) for w in caught] == [kept.warning]
    assert "about 10x slower" in str(kept.warning)
