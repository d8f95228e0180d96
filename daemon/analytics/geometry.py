"""Plane geometry for zones and lines, in normalized frame coordinates.

Points are ``(x, y)`` with x = column / frame width and y = row / frame height, both in [0, 1],
y growing downwards (image convention), so a zone or line stays where it is when a camera's
resolution changes. Everything here is pure numpy/Python: no media stack, no state.

Side of a directed line: ``cross(b - a, p - a)`` (the 2-D cross product). With y pointing down,
a positive value means ``p`` lies to the *right* of the direction a -> b as seen on screen.
Segment intersection is the textbook orientation test (Cormen et al., *Introduction to
Algorithms*, 3rd ed., section 33.1); point-in-polygon is the even-odd ray-casting rule (the
one used by PNPOLY, W. R. Franklin).
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]

__all__ = ["Point", "cross", "side", "segments_intersect", "self_intersection", "point_in_polygon", "on_segment",
           "polygon_problems", "line_problems"]

EPS = 1e-12


def cross(o: Point, a: Point, b: Point) -> float:
    """z of (a - o) x (b - o): > 0 when ``b`` is right of o -> a on screen (y down)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def side(a: Point, b: Point, p: Point) -> int:
    """+1 when ``p`` is right of the directed line a -> b (on screen, y down), -1 left, 0 on it."""
    c = cross(a, b, p)
    return 1 if c > EPS else -1 if c < -EPS else 0


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) - EPS <= p[0] <= max(a[0], b[0]) + EPS and \
        min(a[1], b[1]) - EPS <= p[1] <= max(a[1], b[1]) + EPS


def segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether the closed segments p1-p2 and q1-q2 share a point (touching counts)."""
    d1, d2 = cross(q1, q2, p1), cross(q1, q2, p2)
    d3, d4 = cross(p1, p2, q1), cross(p1, p2, q2)
    if ((d1 > EPS and d2 < -EPS) or (d1 < -EPS and d2 > EPS)) and \
            ((d3 > EPS and d4 < -EPS) or (d3 < -EPS and d4 > EPS)):
        return True
    return any(abs(d) <= EPS and _on_segment(s0, s1, pt) for d, s0, s1, pt in
               ((d1, q1, q2, p1), (d2, q1, q2, p2), (d3, p1, p2, q1), (d4, p1, p2, q2)))


def self_intersection(points: Sequence[Point]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges (i, j) of the closed polygon that touch or cross,
    edge i running from point i to point i+1; ``None`` for a simple polygon. O(n^2): zones have
    a handful of points."""
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex by construction
            if segments_intersect(a, b, points[j], points[(j + 1) % n]):
                return i, j
    return None


ON_EDGE = 1e-9  # normalized units: a point this close to an edge lies on it


def on_segment(p: Point, a: Point, b: Point, eps: float = ON_EDGE) -> bool:
    """``p`` lies on the segment a-b (within ``eps``, normalized frame units)."""
    if abs(cross(a, b, p)) > eps * max(1.0, abs(b[0] - a[0]) + abs(b[1] - a[1])):
        return False
    return (min(a[0], b[0]) - eps <= p[0] <= max(a[0], b[0]) + eps
            and min(a[1], b[1]) - eps <= p[1] <= max(a[1], b[1]) + eps)


def point_in_polygon(p: Point, poly: Sequence[Point]) -> bool:
    """``p`` is inside the closed polygon ``poly`` (normalized coordinates): on an edge or a
    vertex counts as inside, elsewhere the even-odd rule (ray casting to +x).

    Closed because anchors are clipped to the frame: an object cut off by the bottom edge has
    its anchor at y = 1.0 exactly, and a zone drawn to the frame's edge (``[0, 1]``, ``[1, 1]``)
    must contain it. Zones sharing an edge both contain the points on it."""
    n = len(poly)
    if any(on_segment(p, poly[i - 1], poly[i]) for i in range(n)):
        return True
    x, y = p
    inside = False
    j = n - 1
    for i in range(n):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def _outside(points: Sequence[Point]) -> list[str]:
    return [f"point {i} ({x:g}, {y:g}) is outside the frame: coordinates are fractions of the "
            "frame's width and height, in [0, 1]" for i, (x, y) in enumerate(points)
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0)]


def polygon_problems(points: Sequence[Point]) -> list[str]:
    """Why ``points`` is not a usable zone: fewer than 3 points, a point outside [0, 1]^2,
    repeated points, zero area, or edges that cross. Empty when it is fine."""
    if len(points) < 3:
        return [f"a zone needs at least 3 points, got {len(points)}"]
    problems = _outside(points)
    if len(set(points)) != len(points):
        problems.append("the polygon repeats a point")
        return problems
    hit = self_intersection(points)
    if hit is not None:
        i, j = hit
        problems.append(f"the polygon is self-intersecting: edge {i} (point {i} -> {(i + 1) % len(points)}) "
                        f"crosses edge {j} (point {j} -> {(j + 1) % len(points)})")
        return problems
    area2 = sum(points[i][0] * points[(i + 1) % len(points)][1] - points[(i + 1) % len(points)][0] * points[i][1]
                for i in range(len(points)))
    if abs(area2) <= EPS:
        problems.append("the polygon has no area (its points lie on one line)")
    return problems


def line_problems(points: Sequence[Point]) -> list[str]:
    """Why ``points`` is not a usable directed line: not exactly 2 points, outside [0, 1]^2,
    or both points equal."""
    if len(points) != 2:
        return [f"a line is exactly 2 points [start, end], got {len(points)}"]
    problems = _outside(points)
    if points[0] == points[1]:
        problems.append("the line's start and end are the same point")
    return problems
