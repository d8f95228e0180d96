"""daemon/analytics/geometry.py: zones are closed polygons (a newcomer's trial found objects cut
off by the bottom edge, anchored at y = 1.0 exactly, never entering a zone drawn to that edge)."""

from __future__ import annotations

import pytest

from daemon.analytics.geometry import on_segment, point_in_polygon

RIGHT_HALF = [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]
KERB = [(0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)]  # config.yaml's example zone
TRIANGLE = [(0.2, 0.2), (0.8, 0.3), (0.4, 0.9)]


@pytest.mark.parametrize("p", [(0.7, 1.0), (1.0, 0.5), (1.0, 1.0), (0.5, 0.5), (0.7, 0.0), (0.7, 0.5)])
def test_points_on_the_frame_edge_and_the_zone_edge_are_inside(p: tuple[float, float]) -> None:
    assert point_in_polygon(p, RIGHT_HALF)


@pytest.mark.parametrize("p", [(0.3, 1.0), (0.0, 0.8), (1.0, 0.6), (0.5, 0.6)])
def test_example_kerb_zone_holds_anchors_clipped_to_the_bottom(p: tuple[float, float]) -> None:
    assert point_in_polygon(p, KERB)


@pytest.mark.parametrize("p", [(0.49, 0.5), (0.3, 0.59), (0.5, -0.01), (0.1, 0.1), (0.9, 0.9)])
def test_points_outside_stay_outside(p: tuple[float, float]) -> None:
    poly = KERB if p[1] == 0.59 else RIGHT_HALF if p[0] < 0.5 or p[1] < 0 else TRIANGLE
    assert not point_in_polygon(p, poly)


def test_slanted_edges_and_vertices() -> None:
    assert point_in_polygon((0.5, 0.25), TRIANGLE)  # on the edge (0.2, 0.2) -> (0.8, 0.3)
    assert point_in_polygon((0.4, 0.9), TRIANGLE)  # a vertex
    assert point_in_polygon((0.45, 0.4), TRIANGLE)
    assert not point_in_polygon((0.5, 0.24), TRIANGLE)  # just outside that edge


def test_on_segment() -> None:
    assert on_segment((0.5, 0.5), (0.0, 0.0), (1.0, 1.0))
    assert not on_segment((1.5, 1.5), (0.0, 0.0), (1.0, 1.0))  # on the line, past the end
    assert not on_segment((0.5, 0.5001), (0.0, 0.0), (1.0, 1.0))
