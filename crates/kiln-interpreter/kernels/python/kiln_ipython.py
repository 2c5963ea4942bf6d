"""Kiln's IPython extension for code-interpreter kernels: the result formats
E2B's SDKs read beyond Jupyter's own.

- `e2b/data`: a pandas DataFrame as `{column: [values...]}` (the SDK's
  `Result.data`), timestamps as ISO 8601 strings.
- `e2b/chart`: a matplotlib Figure as the SDK's chart model (`Result.chart`;
  see kiln_charts).
- `application/json`: plain dicts and lists as JSON (`Result.json`).
- PIL: `Image.show()` and `Image.save(path)` display the image (a png
  result) instead of looking for a viewer.

Nothing heavy is imported here: a kernel starts as fast as without it.
pandas, matplotlib and PIL are only looked at once user code has imported
them, and the chart extractor only when a figure is shown. JSON cannot carry
NaN or infinities: they become null.
"""

import datetime
import enum
import importlib.abc
import math
import os
import sys
import uuid

from IPython.core.formatters import BaseFormatter, JSONFormatter
from traitlets import ObjectName, Unicode


class Unjsonable(TypeError):
    """A value with no JSON form."""


def _key(key):
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def to_json(value, lenient=False, depth=0):
    """`value` as JSON-ready Python data. Unknown types raise Unjsonable, or
    with `lenient` become their str()."""
    if depth > 100:
        raise Unjsonable("nested too deeply")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k): to_json(v, lenient, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, lenient, depth + 1) for v in value]
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        # NaT passes for a datetime; NA is its own type.
        if value is pandas.NaT or value is pandas.NA:
            return None
        if isinstance(value, pandas.Timedelta):
            return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_json(value.value, lenient, depth + 1)
    if isinstance(value, uuid.UUID):
        return str(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.datetime64):
            return str(value)
        if isinstance(value, numpy.generic):
            return to_json(value.item(), lenient, depth + 1)
        if isinstance(value, numpy.ndarray):
            return to_json(value.tolist(), lenient, depth + 1)
    if lenient:
        return str(value)
    raise Unjsonable(f"{type(value).__name__} has no JSON form")


class DataFormatter(BaseFormatter):
    """`e2b/data`: a DataFrame's columns as lists."""

    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    _return_type = (dict, str)

    def __call__(self, obj):
        pandas = sys.modules.get("pandas")
        if pandas is None or not isinstance(obj, pandas.DataFrame):
            return super().__call__(obj)
        try:
            return to_json(obj.to_dict(orient="list"), lenient=True)
        except Exception:  # a display must not fail because of this format
            return None


class ChartFormatter(BaseFormatter):
    """`e2b/chart`: what a matplotlib figure shows, as data."""

    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    _return_type = (dict, str)

    def __call__(self, obj):
        figure = sys.modules.get("matplotlib.figure")
        if figure is None or not isinstance(obj, figure.Figure):
            return super().__call__(obj)
        try:
            import kiln_charts

            chart = kiln_charts.figure_to_chart(obj)
            return to_json(chart) if chart else None
        except Exception:
            return None


class KilnJSONFormatter(JSONFormatter):
    """`application/json`: also plain dicts and lists, as E2B gives them."""

    def __call__(self, obj):
        if isinstance(obj, (dict, list)):
            try:
                return to_json(obj), {"expanded": True}
            except (Unjsonable, RecursionError):
                pass
        return super().__call__(obj)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a function on a module right after it is first imported."""

    def __init__(self):
        self.hooks = {}

    def find_spec(self, name, path, target=None):
        hook = self.hooks.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.hooks[name]
        spec.loader = _HookedLoader(spec.loader, hook)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception:
            pass

    def __getattr__(self, name):
        return getattr(self.loader, name)


_after_import = _AfterImport()


def after_import(name, hook):
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    _after_import.hooks[name] = hook
    if _after_import not in sys.meta_path:
        sys.meta_path.insert(0, _after_import)


def _patch_pil(image_module):
    from IPython.display import display

    image_class = image_module.Image
    save = image_class.save

    def show(self, title=None, **options):
        display(self)

    def save_and_display(self, fp, format=None, **params):
        # A path (not an open file): the image a cell saves is a result too.
        if isinstance(fp, (str, os.PathLike)):
            display(self)
        return save(self, fp, format, **params)

    image_class.show = show
    image_class.save = save_and_display


def load_ipython_extension(ip):
    formatter = ip.display_formatter
    formatter.formatters["e2b/data"] = DataFormatter(parent=formatter)
    formatter.formatters["e2b/chart"] = ChartFormatter(parent=formatter)
    formatter.formatters["application/json"] = KilnJSONFormatter(parent=formatter)
    after_import("PIL.Image", _patch_pil)
