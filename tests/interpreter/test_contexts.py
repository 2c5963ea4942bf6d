"""Contexts as E2B lists them, through the sync and the async SDK: the
default Python and JavaScript contexts from the start, in creation order."""

import uuid

from e2b_code_interpreter import Context


def test_default_contexts_are_listed(sbx):
    contexts = sbx.list_code_contexts()
    languages = [c.language for c in contexts]
    assert "python" in languages and "javascript" in languages
    # The first two, as the server declared them at start.
    assert languages[:2] == ["python", "javascript"]
    assert all(isinstance(c, Context) for c in contexts)


def test_a_listed_default_context_is_the_languages_default(sbx):
    (js,) = [c for c in sbx.list_code_contexts() if c.language == "javascript"][:1]
    name = f"shared_{uuid.uuid4().hex[:8]}"
    sbx.run_code(f"var {name} = 'same'", language="javascript")
    assert sbx.run_code(name, context=js).text == "same"
    (py,) = [c for c in sbx.list_code_contexts() if c.language == "python"][:1]
    sbx.run_code(f"{name} = 'py'")
    assert sbx.run_code(name, context=py).text == "py"


def test_a_new_context_is_listed_last(sbx, tmp_path):
    for options in [{}, {"language": "python", "cwd": str(tmp_path)}, {"language": "r"}]:
        context = sbx.create_code_context(**options)
        try:
            last = sbx.list_code_contexts()[-1]
            assert (last.id, last.language, last.cwd) == (context.id, context.language, context.cwd)
        finally:
            sbx.remove_code_context(context.id)
        assert context.id not in [c.id for c in sbx.list_code_contexts()]
