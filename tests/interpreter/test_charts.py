"""matplotlib figures shown with plt.show() come back with `result.chart`,
the SDK's chart model, beside the png: through the sync and the async SDK."""

import datetime
import json

import pytest
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    Chart,
    ChartType,
    LineChart,
    PieChart,
    ScaleType,
    ScatterChart,
    SuperChart,
)


def shown(sbx, code):
    """The one result of a cell that ends with plt.show()."""
    execution = sbx.run_code("import matplotlib.pyplot as plt\nplt.close('all')\n" + code + "\nplt.show()")
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert result.png and result.text.startswith("<Figure")
    assert not result.is_main_result
    assert "chart" in result.formats()
    return result.chart


def test_bar_chart(sbx):
    chart = shown(
        sbx,
        "plt.bar(['Oslo', 'Lima', 'Pune'], [3, 7, 5], label='Visits')\n"
        "plt.xlabel('City'); plt.ylabel('Visits [k]'); plt.title('Visits by city')",
    )
    assert isinstance(chart, BarChart) and chart.type == ChartType.BAR
    assert chart.title == "Visits by city"
    assert (chart.x_label, chart.y_label) == ("City", "Visits [k]")
    assert (chart.x_unit, chart.y_unit) == (None, "k")
    assert [(b.label, b.value, b.group) for b in chart.elements] == [
        ("Oslo", 3, "Visits"),
        ("Lima", 7, "Visits"),
        ("Pune", 5, "Visits"),
    ]


def test_horizontal_and_grouped_bars(sbx):
    chart = shown(
        sbx,
        "plt.barh(['a', 'b'], [1, 2], label='first')\n"
        "plt.barh(['a', 'b'], [3, 4], left=[1, 2])\n"
        "plt.xlabel('amount (kg)'); plt.ylabel('item')",
    )
    assert isinstance(chart, BarChart)
    # x names the categories, y the values, whichever way the bars lie.
    assert (chart.x_label, chart.y_label, chart.y_unit) == ("item", "amount (kg)", "kg")
    assert [(b.label, b.value, b.group) for b in chart.elements] == [
        ("a", 1, "first"),
        ("b", 2, "first"),
        ("a", 3, "Group 1"),
        ("b", 4, "Group 1"),
    ]


def test_line_chart_with_dates_and_units(sbx):
    chart = shown(
        sbx,
        "import datetime\n"
        "days = [datetime.date(2024, 3, d) for d in range(1, 6)]\n"
        "plt.plot(days, [1, 4, 9, 16, 25], label='squares')\n"
        "plt.plot(days, [5, 4, 3, 2, 1])\n"
        "plt.xlabel('Day (UTC)'); plt.ylabel('Height (m)'); plt.title('Growth')",
    )
    assert isinstance(chart, LineChart) and chart.type == ChartType.LINE
    assert chart.title == "Growth"
    assert (chart.x_unit, chart.y_unit) == ("UTC", "m")
    assert chart.x_scale == ScaleType.DATETIME and chart.y_scale == ScaleType.LINEAR
    assert all(isinstance(datetime.datetime.fromisoformat(t), datetime.datetime) for t in chart.x_ticks)
    assert all(isinstance(t, float) for t in chart.y_ticks)
    assert len(chart.x_tick_labels) == len(chart.x_ticks)
    squares, other = chart.elements
    assert squares.label == "squares" and other.label == "Line 1"
    assert squares.points[0] == ("2024-03-01", 1.0)
    assert squares.points[-1] == ("2024-03-05", 25.0)
    assert [y for _, y in other.points] == [5, 4, 3, 2, 1]


def test_log_and_categorical_scales(sbx):
    chart = shown(sbx, "plt.plot([1, 10, 100], [1, 2, 3]); plt.xscale('log')")
    assert (chart.x_scale, chart.y_scale) == (ScaleType.LOG, ScaleType.LINEAR)
    chart = shown(sbx, "plt.plot([1, 2, 3], ['low', 'mid', 'high'])")
    assert (chart.x_scale, chart.y_scale) == (ScaleType.LINEAR, ScaleType.CATEGORICAL)
    assert chart.y_tick_labels == ["low", "mid", "high"]
    assert chart.elements[0].points == [(1.0, "low"), (2.0, "mid"), (3.0, "high")]


def test_scatter_chart(sbx):
    chart = shown(
        sbx,
        "plt.scatter([1, 2, 3], [3, 1, 2], label='a')\n"
        "plt.scatter([4, 5], [0.5, 0.25], label='b')\n"
        "plt.grid(True); plt.axhline(1)\n"
        "plt.xlabel('x')",
    )
    assert isinstance(chart, ScatterChart) and chart.type == ChartType.SCATTER
    assert chart.title is None and chart.x_label == "x" and chart.y_label is None
    assert [(e.label, e.points) for e in chart.elements] == [
        ("a", [(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)]),
        ("b", [(4.0, 0.5), (5.0, 0.25)]),
    ]


def test_pie_chart(sbx):
    chart = shown(
        sbx,
        "plt.pie([90, 10], labels=['yes', 'no'], startangle=90, autopct='%1.0f%%')\n"
        "plt.title('Votes')",
    )
    assert isinstance(chart, PieChart) and chart.type == ChartType.PIE
    assert chart.title == "Votes"
    assert [(p.label, p.angle, p.radius) for p in chart.elements] == [("yes", 324, 1), ("no", 36, 1)]


def test_box_and_whisker_chart(sbx):
    chart = shown(
        sbx,
        "plt.boxplot([[1, 2, 3, 4, 5], [2, 4, 6, 8, 10, 40]], labels=['A', 'B'], patch_artist=True)\n"
        "plt.ylabel('Score'); plt.xlabel('Group'); plt.title('Scores')",
    )
    assert isinstance(chart, BoxAndWhiskerChart) and chart.type == ChartType.BOX_AND_WHISKER
    assert (chart.title, chart.x_label, chart.y_label) == ("Scores", "Group", "Score")
    a, b = chart.elements
    assert (a.label, a.min, a.first_quartile, a.median, a.third_quartile, a.max, a.outliers) == (
        "A", 1, 2, 3, 4, 5, [],
    )
    assert (b.label, b.min, b.median, b.max, b.outliers) == ("B", 2, 7, 10, [40])
    assert (b.first_quartile, b.third_quartile) == (4.5, 9.5)


def test_several_axes_are_a_superchart(sbx):
    chart = shown(
        sbx,
        "fig, (left, right) = plt.subplots(1, 2)\n"
        "fig.suptitle('Both')\n"
        "left.plot([0, 1, 2], [0, 1, 4]); left.set_title('curve')\n"
        "right.bar(['x', 'y'], [2, 3]); right.set_title('bars')",
    )
    assert isinstance(chart, SuperChart) and chart.type == ChartType.SUPERCHART
    assert chart.title == "Both"
    line, bars = chart.elements
    assert isinstance(line, LineChart) and line.title == "curve"
    assert isinstance(bars, BarChart) and [b.value for b in bars.elements] == [2, 3]


def test_other_drawings_are_unknown_charts(sbx):
    chart = shown(sbx, "plt.gca().add_patch(plt.Circle((0, 0), 1)); plt.title('circle')")
    assert type(chart) is Chart and chart.type == ChartType.UNKNOWN
    assert chart.title == "circle" and chart.elements == []


def test_an_empty_figure_has_no_chart(sbx):
    execution = sbx.run_code("import matplotlib.pyplot as plt\nplt.figure()\nplt.show()")
    assert execution.error is None
    assert all(r.chart is None for r in execution.results)


def test_a_chart_survives_nan_and_serialises(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.close('all')\n"
        "plt.plot([1, 2, 3], [1, float('nan'), 3]); plt.show()"
    )
    (result,) = execution.results
    assert result.chart.elements[0].points == [(1.0, 1.0), (2.0, None), (3.0, 3.0)]
    assert json.loads(execution.to_json())["results"][0]["chart"]["type"] == "line"


@pytest.mark.parametrize("call", ["plt.show()", "display(plt.gcf())"])
def test_the_chart_comes_with_the_png_display(sbx, call):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nfrom IPython.display import display\nplt.close('all')\n"
        f"plt.plot([0, 1], [1, 0])\n{call}\nplt.close('all')"
    )
    (result,) = execution.results
    assert result.png and result.chart.type == ChartType.LINE
    assert not result.extra
