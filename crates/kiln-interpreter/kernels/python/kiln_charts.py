"""What a matplotlib figure shows, as the chart model of E2B's SDKs
(`e2b_code_interpreter.charts`): `figure_to_chart(figure)` returns a dict, or
None for a figure with nothing drawn.

The chart's `type` follows from the artists of the axes:
- only lines: `line`; boxes (patches) with lines: `box_and_whisker`;
- besides lines that only mark a level (two points on a horizontal or
  vertical), only point collections: `scatter`; only wedges: `pie`; only
  rectangles: `bar`;
- anything else: `unknown` (title only). A figure with several axes is a
  `superchart` whose elements are the charts of its axes.

Every chart has `title` and `elements`; the 2-D ones `x_label`, `y_label`
and the units found in them ("Time (s)", "Amplitude [Hz]"); line and
scatter charts also their ticks, tick labels and the scale of each axis
(`linear`, `datetime`, `categorical`, `log` and matplotlib's other scale
names). Dates are ISO 8601 strings.
"""

import datetime
import math
import re

from matplotlib import category as mcategory
from matplotlib import dates as mdates
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Rectangle, Wedge
from matplotlib.text import Text

_UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")


def figure_to_chart(figure):
    axes = [ax for ax in figure.get_axes()]
    if not axes or not any(ax.has_data() for ax in axes):
        return None
    if len(axes) > 1:
        title = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) else ""
        return {
            "type": "superchart",
            "title": title,
            "elements": [axes_to_chart(ax) for ax in axes],
        }
    return axes_to_chart(axes[0])


def axes_to_chart(ax):
    kind = chart_type(ax)
    if kind in ("line", "scatter"):
        chart = _point_chart(ax, kind)
    elif kind == "bar":
        chart = _bar_chart(ax)
    elif kind == "box_and_whisker":
        chart = _box_chart(ax)
    elif kind == "pie":
        chart = _pie_chart(ax)
    else:
        chart = {"type": "unknown", "title": _title(ax), "elements": []}
    return chart


def is_level_line(line):
    """A two-point line along one axis (axhline, axvline and the like)."""
    x, y = line.get_xdata(), line.get_ydata()
    return len(x) == 2 and len(y) == 2 and (x[0] == x[1] or y[0] == y[1])


def chart_type(ax):
    artists = [a for a in ax._children if not isinstance(a, Text)]
    if all(isinstance(a, Line2D) for a in artists):
        return "line"
    if all(isinstance(a, (PathPatch, Line2D)) for a in artists):
        return "box_and_whisker"
    artists = [a for a in artists if not (isinstance(a, Line2D) and is_level_line(a))]
    for kind, types in (
        ("scatter", PathCollection),
        ("pie", Wedge),
        ("bar", Rectangle),
    ):
        if all(isinstance(a, types) for a in artists):
            return kind
    return "unknown"


def _title(ax):
    return ax.get_title() or None


def _labels(ax):
    chart = {"title": _title(ax)}
    for axis, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())):
        chart[f"{axis}_label"] = label or None
        match = _UNIT.search(label) if label else None
        chart[f"{axis}_unit"] = (match.group(1) or match.group(2)) if match else None
    return chart


def _swap_axes(chart):
    for a, b in (("x_label", "y_label"), ("x_unit", "y_unit")):
        chart[a], chart[b] = chart[b], chart[a]


def _is_dates(axis):
    converter = getattr(axis, "converter", None)
    return converter is not None and type(converter).__module__ == mdates.__name__


def _is_categories(axis):
    return isinstance(getattr(axis, "converter", None), mcategory.StrCategoryConverter)


def _number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _point_value(value, dates):
    """A point's coordinate: numbers as floats, dates as ISO strings."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    numpy = _numpy()
    if numpy is not None and isinstance(value, numpy.datetime64):
        return str(value.astype("datetime64[s]"))
    if isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if dates and math.isfinite(number):
        return mdates.num2date(number).isoformat()
    return number if math.isfinite(number) else None


def _numpy():
    import sys

    return sys.modules.get("numpy")


def _scale(axis, scale, ticks, labels):
    if _is_dates(axis):
        return "datetime"
    if _is_categories(axis):
        return "categorical"
    if scale != "linear":
        return scale
    # Ticks 0..n-1 labelled with names, as set_xticks(range(n), names) gives.
    if ticks and all(
        isinstance(t, float) and t == i and label != str(i) and label != f"{i}.0"
        for i, (t, label) in enumerate(zip(ticks, labels))
    ):
        return "categorical"
    return "linear"


def _ticks(axis, values):
    if _is_dates(axis):
        return [mdates.num2date(v).isoformat() for v in values]
    return [_number(v) for v in values]


def _point_chart(ax, kind):
    chart = {"type": kind, **_labels(ax)}
    for name, axis, ticks, labels, scale in (
        ("x", ax.xaxis, ax.get_xticks(), ax.get_xticklabels(), ax.get_xscale()),
        ("y", ax.yaxis, ax.get_yticks(), ax.get_yticklabels(), ax.get_yscale()),
    ):
        chart[f"{name}_ticks"] = _ticks(axis, ticks)
        chart[f"{name}_tick_labels"] = [label.get_text() for label in labels]
        chart[f"{name}_scale"] = _scale(
            axis, scale, chart[f"{name}_ticks"], chart[f"{name}_tick_labels"]
        )
    x_dates, y_dates = _is_dates(ax.xaxis), _is_dates(ax.yaxis)
    elements = []
    if kind == "line":
        for line in ax.get_lines():
            if is_level_line(line):
                continue
            label = line.get_label()
            if label.startswith("_child"):
                label = "Line " + label[len("_child"):]
            points = [
                [_point_value(x, False), _point_value(y, False)]
                for x, y in zip(line.get_xdata(), line.get_ydata())
            ]
            elements.append({"label": label, "points": points})
    else:
        for collection in ax.collections:
            points = [
                [_point_value(x, x_dates), _point_value(y, y_dates)]
                for x, y in collection.get_offsets()
            ]
            elements.append({"label": collection.get_label(), "points": points})
    chart["elements"] = elements
    return chart


def _category_label(axis, position, ticks, labels):
    """The name of the category or tick at `position` on `axis`."""
    units = getattr(axis, "units", None)
    mapping = getattr(units, "_mapping", None)
    if _is_categories(axis) and mapping:
        for name, value in mapping.items():
            if math.isclose(value, position, abs_tol=1e-6):
                return str(name)
    for tick, label in zip(ticks, labels):
        if math.isclose(tick, position, abs_tol=1e-6) and label.get_text():
            return label.get_text()
    if _is_dates(axis):
        return mdates.num2date(position).isoformat()
    return f"{position:g}"


def _bar_chart(ax):
    chart = {"type": "bar", **_labels(ax)}
    elements = []
    horizontal_seen = False
    for container in ax.containers:
        rects = [r for r in container if isinstance(r, Rectangle)]
        if not rects:
            continue
        group = container.get_label()
        if group.startswith("_container"):
            group = "Group " + group[len("_container"):]
        orientation = getattr(container, "orientation", None)
        if orientation is None:
            heights = [r.get_height() for r in rects]
            orientation = "horizontal" if len(set(heights)) == 1 and len(rects) > 1 else "vertical"
        horizontal = orientation == "horizontal"
        horizontal_seen = horizontal_seen or horizontal
        axis = ax.yaxis if horizontal else ax.xaxis
        ticks = ax.get_yticks() if horizontal else ax.get_xticks()
        labels = ax.get_yticklabels() if horizontal else ax.get_xticklabels()
        for rect in rects:
            if horizontal:
                position, value = rect.get_y() + rect.get_height() / 2, rect.get_width()
            else:
                position, value = rect.get_x() + rect.get_width() / 2, rect.get_height()
            elements.append(
                {
                    "label": _category_label(axis, position, ticks, labels),
                    "group": group,
                    "value": _number(value),
                }
            )
    if horizontal_seen:
        # x_label names the categories, y_label the values, either way.
        _swap_axes(chart)
    chart["elements"] = elements
    return chart


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _spans(values, low, high):
    return _close(min(values), low) and _close(max(values), high)


def _vertical_boxes(boxes, lines):
    """Whether the boxes stand on the x axis (matplotlib's default): their
    median runs across the box's width."""
    if len(boxes) > 1:
        widths = {round(b["x1"] - b["x0"], 9) for b in boxes}
        heights = {round(b["y1"] - b["y0"], 9) for b in boxes}
        if len(widths) != len(heights):
            return len(widths) < len(heights)
    for b in boxes:
        for xs, ys, markers_only in lines:
            if markers_only or len(xs) != 2:
                continue
            if _close(ys[0], ys[1]) and _spans(xs, b["x0"], b["x1"]):
                return True
            if _close(xs[0], xs[1]) and _spans(ys, b["y0"], b["y1"]):
                return False
    return True


def _box_chart(ax):
    chart = {"type": "box_and_whisker", **_labels(ax)}
    boxes = []
    for patch in ax.patches:
        if not isinstance(patch, PathPatch):
            continue
        vertices = patch.get_path().vertices
        xs, ys = vertices[:, 0], vertices[:, 1]
        boxes.append(
            {"x0": float(min(xs)), "x1": float(max(xs)), "y0": float(min(ys)), "y1": float(max(ys))}
        )
    lines = [
        (
            [float(v) for v in line.get_xdata()],
            [float(v) for v in line.get_ydata()],
            line.get_linestyle() in ("None", "none", "", " "),
        )
        for line in ax.lines
    ]
    vertical = _vertical_boxes(boxes, lines)
    if not vertical:
        # Work in (position, value) coordinates: swap x and y.
        boxes = [{"x0": b["y0"], "x1": b["y1"], "y0": b["x0"], "y1": b["x1"]} for b in boxes]
        lines = [(ys, xs, m) for xs, ys, m in lines]
        _swap_axes(chart)
    axis = ax.xaxis if vertical else ax.yaxis
    ticks = ax.get_xticks() if vertical else ax.get_yticks()
    labels = ax.get_xticklabels() if vertical else ax.get_yticklabels()
    elements = []
    for b in boxes:
        low, high, mid = b["y0"], b["y1"], (b["x0"] + b["x1"]) / 2
        box = {
            "label": _category_label(axis, mid, ticks, labels),
            "min": low,
            "first_quartile": low,
            "median": None,
            "third_quartile": high,
            "max": high,
            "outliers": [],
        }

        def inside(x, b=b):
            return b["x0"] - 1e-9 <= x <= b["x1"] + 1e-9

        for xs, ys, markers_only in lines:
            if markers_only:
                # Fliers: points drawn at the box's position.
                box["outliers"] += [y for x, y in zip(xs, ys) if inside(x)]
            elif len(xs) == 2 and inside(xs[0]) and inside(xs[1]):
                if _close(ys[0], ys[1]) and _spans(xs, b["x0"], b["x1"]):
                    box["median"] = ys[0]  # caps are narrower than the box
                elif _close(xs[0], xs[1]) and _close(max(ys), low):
                    box["min"] = min(ys)  # the lower whisker
                elif _close(xs[0], xs[1]) and _close(min(ys), high):
                    box["max"] = max(ys)
        elements.append(box)
    chart["elements"] = elements
    return chart


def _pie_chart(ax):
    elements = []
    for wedge in ax.patches:
        if not isinstance(wedge, Wedge):
            continue
        # Degrees; wedges are laid out in floating point (323.99999 for 90%).
        angle = round(abs(float(wedge.theta2) - float(wedge.theta1)), 4)
        elements.append(
            {
                "label": wedge.get_label(),
                "angle": angle,
                "radius": float(wedge.r),
            }
        )
    return {"type": "pie", "title": _title(ax), "elements": elements}
