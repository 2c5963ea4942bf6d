"""Result formats as E2B's template gives them, through the sync and the
async SDK: a DataFrame's `data`, PIL images and saved figures as png
results, JSON of plain dicts and lists, tracebacks without colours."""

import ast
import base64
import struct


def png_size(b64):
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_dataframe_carries_its_data(sbx):
    execution = sbx.run_code(
        "import pandas as pd\n"
        "pd.DataFrame({'city': ['Oslo', 'Lima', None], 'n': [3, 7, float('nan')],\n"
        "              'day': pd.to_datetime(['2024-01-02', '2024-01-03', None])})"
    )
    assert execution.error is None
    (result,) = execution.results
    assert result.is_main_result
    assert "<table" in result.html and "Oslo" in result.text
    assert result.data == {
        "city": ["Oslo", "Lima", None],
        "n": [3.0, 7.0, None],
        "day": ["2024-01-02T00:00:00", "2024-01-03T00:00:00", None],
    }
    assert "data" in result.formats()


def test_other_values_carry_no_data(sbx):
    execution = sbx.run_code("import pandas as pd\npd.Series([1, 2])")
    (result,) = execution.results
    assert result.data is None and result.text


def test_pil_show_and_save_give_png_results(sbx, tmp_path):
    make = (
        "from PIL import Image\n"
        "image = Image.new('RGBA', (16, 12), (255, 0, 0, 255))\n"
    )
    shown = sbx.run_code(make + "image.show()\nprint('shown')")
    assert shown.error is None
    assert [png_size(r.png) for r in shown.results] == [(16, 12)]
    assert shown.logs.stdout == ["shown\n"]
    path = tmp_path / "saved.png"
    saved = sbx.run_code(make + f"image.save({str(path)!r})")
    assert [png_size(r.png) for r in saved.results] == [(16, 12)]
    assert png_size(base64.b64encode(path.read_bytes())) == (16, 12)
    last = sbx.run_code(make + "image")
    (result,) = last.results
    assert result.is_main_result and png_size(result.png) == (16, 12)
    # Saved into an open file: no display, as on E2B.
    quiet = sbx.run_code(make + "import io\nimage.save(io.BytesIO(), 'png')")
    assert quiet.results == []


def test_savefig_and_display_give_png_results(sbx, tmp_path):
    path = tmp_path / "figure.png"
    saved = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.close('all')\n"
        f"plt.plot([1, 2], [2, 1])\nplt.savefig({str(path)!r})\nplt.close('all')"
    )
    assert saved.error is None
    assert path.exists()
    assert [png_size(r.png) for r in saved.results] == [png_size(base64.b64encode(path.read_bytes()))]
    shown = sbx.run_code(f"from IPython.display import Image, display\ndisplay(Image(filename={str(path)!r}))")
    (result,) = shown.results
    assert not result.is_main_result and png_size(result.png) == png_size(saved.results[0].png)


def test_dicts_and_lists_carry_json(sbx):
    execution = sbx.run_code("import numpy as np\n{'a': [1, 2.5, None], 'b': np.int64(3), 1: float('inf')}")
    (result,) = execution.results
    assert result.json == {"a": [1, 2.5, None], "b": 3, "1": None}
    assert result.text.startswith("{")
    execution = sbx.run_code("[1, 'two']")
    assert execution.results[0].json == [1, "two"]
    # What has no JSON form has only its text.
    execution = sbx.run_code("[object()]")
    assert execution.results[0].json is None and execution.results[0].text


def test_tracebacks_have_no_colour_codes(sbx):
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()")
    assert execution.error.name == "ZeroDivisionError"
    assert "\x1b[" not in execution.error.traceback
    assert "return 1 / 0" in execution.error.traceback


def test_long_sequences_are_shown_whole(sbx):
    execution = sbx.run_code("list(range(2000))")
    assert "..." not in execution.text
    assert ast.literal_eval(execution.text) == list(range(2000))
