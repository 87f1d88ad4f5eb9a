"""Which hardware profile the demo builds for: the simulated devices run on this machine's CPU.

A bundle built for a profile whose CPU features this machine lacks would (rightly) fail the
on-device self-test: e.g. an x86_64-avx512-vnni build validated with exact VNNI integer
semantics gives different int8 results on an AVX2-only CPU, and its golden vectors catch it.
So ``auto`` picks the profile this CPU satisfies, and an explicit profile is checked.
"""

from __future__ import annotations

import platform

from edgeops.errors import ConfigError

from edgeops.profiles import VNNI_FLAGS, host_cpu_flags


def choose_profile(requested: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(profile name or path, why) for ``requested`` ('auto' or a profile); ConfigError when unusable."""
    from edgeops.profiles import load_profile

    flags = host_cpu_flags() if flags is None else flags
    if requested == "auto":
        machine = platform.machine().lower()
        if machine not in ("x86_64", "amd64"):
            raise ConfigError(f"--profile auto: this machine is {machine}; pass an onnxruntime profile it satisfies with --profile (see `edgeops profiles list`)")
        if flags & VNNI_FLAGS:
            return "x86_64-avx512-vnni", "this CPU has VNNI"
        if not flags or "avx2" in flags:
            return "x86_64-avx2", "this CPU has AVX2 but no VNNI"
        raise ConfigError("--profile auto: this x86-64 CPU has neither AVX2 nor VNNI; no built-in profile fits it")
    prof = load_profile(requested)
    if prof.runtime.name != "onnxruntime":
        raise ConfigError(f"--profile {requested}: it runs {prof.runtime.name}; the demo's devices run onnxruntime models (use e.g. x86_64-avx2 or x86_64-avx512-vnni)")
    if flags:
        missing = [f for f in prof.device.cpu_features if not _has(f, flags)]
        if missing:
            raise ConfigError(
                f"--profile {requested}: this machine's CPU lacks {', '.join(missing)}; the demo's devices run on this CPU, so a model built for "
                f"{prof.name} would (rightly) fail its on-device self-test. Use --profile auto (picks {choose_profile('auto', flags)[0]})"
            )
    return requested, "given with --profile"


def _has(feature: str, flags: set[str]) -> bool:
    f = feature.lower()
    if f in flags or f.replace("_", "") in flags:
        return True
    return f in VNNI_FLAGS and bool(flags & VNNI_FLAGS)
