"""JUnit XML for CI dashboards: one test case per measured case. A case is a failure when its
outcome was not the expected one, an error when it could not be measured, skipped when it did not
apply (not applicable, fstests' notrun)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

KINDS = ("pass", "failure", "error", "skipped")


def write(suite_name: str, cases: list[dict[str, Any]], path: Path) -> None:
    """cases: {name, classname, kind (pass|failure|error|skipped), message, details, seconds}."""
    count = {k: sum(1 for c in cases if c["kind"] == k) for k in KINDS}
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(cases)), failures=str(count["failure"]),
                       errors=str(count["error"]), skipped=str(count["skipped"]),
                       time=f"{sum(c.get('seconds', 0) or 0 for c in cases):.1f}")
    for c in cases:
        case = ET.SubElement(suite, "testcase", name=c["name"], classname=c["classname"], time=f"{c.get('seconds', 0) or 0:.1f}")
        if c["kind"] == "error":
            ET.SubElement(case, "error", message=c["message"]).text = c.get("details", "")
        elif c["kind"] == "failure":
            ET.SubElement(case, "failure", message=c["message"]).text = c.get("details", "")
        elif c["kind"] == "skipped":
            ET.SubElement(case, "skipped", message=c["message"])
        else:
            ET.SubElement(case, "system-out").text = c["message"]
    ET.indent(suite)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
