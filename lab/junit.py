"""JUnit XML for CI dashboards: one test case per measured case, failures where the outcome was
not the expected one."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def write(suite_name: str, cases: list[dict], path) -> None:
    """cases: {name, classname, seconds, outcome, ok, message, details}."""
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(cases)),
                       failures=str(sum(1 for c in cases if not c["ok"] and c["outcome"] != "error")),
                       errors=str(sum(1 for c in cases if c["outcome"] == "error")),
                       time=f"{sum(c.get('seconds', 0) for c in cases):.1f}")
    for c in cases:
        case = ET.SubElement(suite, "testcase", name=c["name"], classname=c["classname"], time=f"{c.get('seconds', 0):.1f}")
        if c["outcome"] == "error":
            ET.SubElement(case, "error", message=c["message"]).text = c.get("details", "")
        elif not c["ok"]:
            ET.SubElement(case, "failure", message=c["message"]).text = c.get("details", "")
        else:
            ET.SubElement(case, "system-out").text = c["message"]
    ET.indent(suite)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
