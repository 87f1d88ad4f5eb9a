"""The result of a hardware-in-loop run and its JUnit XML and JSON forms."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Check:
    """One check: a JUnit test case. ``measured``/``threshold`` explain the verdict."""

    name: str
    passed: bool
    measured: float | None = None
    threshold: float | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class HilReport:
    """Everything a HIL run found out about one bundle on one device."""

    bundle: str
    target: str  # "local:<hostname>" or "device:<id>"
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float | str | None] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"bundle": self.bundle, "target": self.target, "passed": self.passed, "checks": [asdict(c) for c in self.checks], "figures": self.figures}

    def write_json(self, path: str | Path) -> None:
        """Write the JSON report."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def to_junit(self) -> bytes:
        """JUnit XML: one <testcase> per check, figures as <properties>."""
        failures = sum(1 for c in self.checks if not c.passed)
        suites = ET.Element("testsuites", name="edgeops-hil", tests=str(len(self.checks)), failures=str(failures))
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"hil {self.bundle} on {self.target}",
            tests=str(len(self.checks)),
            failures=str(failures),
            errors="0",
            time=f"{sum(c.seconds for c in self.checks):.3f}",
        )
        props = ET.SubElement(suite, "properties")
        for key, value in sorted(self.figures.items()):
            ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
        for c in self.checks:
            case = ET.SubElement(suite, "testcase", classname=f"edgeops.hil.{self.target.replace(':', '.')}", name=c.name, time=f"{c.seconds:.3f}")
            text = f"measured={c.measured} threshold={c.threshold} {c.detail}".strip()
            if not c.passed:
                failure = ET.SubElement(case, "failure", message=f"{c.name} failed: {text}"[:500], type="HilCheckFailed")
                failure.text = text
            else:
                ET.SubElement(case, "system-out").text = text
        return ET.tostring(suites, encoding="utf-8", xml_declaration=True)

    def write_junit(self, path: str | Path) -> None:
        """Write the JUnit XML report."""
        Path(path).write_bytes(self.to_junit())
