"""daemon/analytics/config.py: label filters checked against the model's class names (a
misspelled label made a line that could never count, silently)."""

from __future__ import annotations

from daemon.analytics.config import AnalyticsConfig, unknown_labels

COCO_SOME = ["person", "bicycle", "car", "motorbike", "bus"]


def cfg(zone_labels: list[str], line_labels: list[str]) -> AnalyticsConfig:
    return AnalyticsConfig.model_validate({
        "tracker": {},
        "zones": [{"name": "kerb", "points": [[0, 0.6], [1, 0.6], [1, 1], [0, 1]], "labels": zone_labels}],
        "lines": [{"name": "mid", "points": [[0.5, 0], [0.5, 1]], "labels": line_labels}],
    })


def test_known_and_empty_labels_pass() -> None:
    assert unknown_labels(cfg(["person"], []), COCO_SOME) == []
    assert unknown_labels(cfg([], ["car", "bus"]), COCO_SOME) == []


def test_a_misspelled_label_is_named_with_its_key_and_a_suggestion() -> None:
    problems = unknown_labels(cfg(["person"], ["car", "persn"]), COCO_SOME)
    assert len(problems) == 1
    p = problems[0]
    assert p.startswith("analytics.lines[0].labels: 'persn' is not a class of the model")
    assert "did you mean 'person'?" in p and "line 'mid'" in p


def test_a_label_with_no_near_name_gets_no_suggestion() -> None:
    problems = unknown_labels(cfg(["zebra-crossing-xyz"], []), COCO_SOME)
    assert len(problems) == 1 and "analytics.zones[0].labels" in problems[0]
    assert "did you mean" not in problems[0]
