"""JUnit XML for CI dashboards: one test case per measured case. A case is a failure when its
outcome was not the expected one, an error when it could not be measured, skipped when it did not
apply (not applicable, fstests' notrun), and flaky when it failed and then passed when run again
(Surefire's `flakyFailure`; a failure that failed again on rerun carries `rerunFailure`)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

KINDS = ("pass", "failure", "error", "skipped", "flaky")
# Characters XML 1.0 cannot carry (a guest program's output may hold any byte).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def clean(text: object) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def write(suite_name: str, cases: list[dict[str, Any]], path: Path) -> None:
    """cases: {name, classname, kind (pass|failure|error|skipped|flaky), message, details, seconds, reruns}."""
    count = {k: sum(1 for c in cases if c["kind"] == k) for k in KINDS}
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(cases)), failures=str(count["failure"]),
                       errors=str(count["error"]), skipped=str(count["skipped"]),
                       time=f"{sum(c.get('seconds', 0) or 0 for c in cases):.1f}")
    for c in cases:
        case = ET.SubElement(suite, "testcase", name=clean(c["name"]), classname=clean(c["classname"]),
                             time=f"{c.get('seconds', 0) or 0:.1f}")
        message, details = clean(c["message"]), clean(c.get("details", ""))
        if c["kind"] == "error":
            ET.SubElement(case, "error", message=message).text = details
        elif c["kind"] == "failure":
            ET.SubElement(case, "failure", message=message).text = details
            for rerun in c.get("reruns", []):
                ET.SubElement(case, "rerunFailure", message=clean(rerun))
        elif c["kind"] == "skipped":
            ET.SubElement(case, "skipped", message=message)
        elif c["kind"] == "flaky":
            ET.SubElement(case, "flakyFailure", message=message).text = details
        else:
            ET.SubElement(case, "system-out").text = message
    ET.indent(suite)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
