"""The same server through the SDK's AsyncSandbox (its own NDJSON reader)."""

import asyncio
import time

from e2b import ConnectionConfig
from e2b_code_interpreter import AsyncSandbox
from packaging.version import Version


def test_async_sdk_runs_cells_and_streams(server_url):
    async def scenario():
        sbx = AsyncSandbox(
            sandbox_id="kiln-interpreter-async-test",
            envd_version=Version("0.5.7"),
            envd_access_token=None,
            sandbox_domain=None,
            connection_config=ConnectionConfig(sandbox_url=server_url, api_key="e2b_" + "0" * 40),
        )
        ctx = await sbx.create_code_context()
        try:
            await sbx.run_code("acc = []", context=ctx)
            seen = []

            async def on_stdout(msg):
                seen.append(time.monotonic())

            execution = await sbx.run_code(
                "import time\nfor i in range(3):\n    acc.append(i); print(i, flush=True); time.sleep(0.4)\nsum(acc)",
                context=ctx,
                on_stdout=on_stdout,
            )
            assert execution.error is None
            assert execution.text == "3"
            assert execution.logs.stdout == ["0\n", "1\n", "2\n"]
            assert seen[-1] - seen[0] > 0.6
            err = await sbx.run_code("undefined_name", context=ctx)
            assert err.error.name == "NameError"
            assert [c.id for c in await sbx.list_code_contexts() if c.id == ctx.id] == [ctx.id]
        finally:
            await sbx.remove_code_context(ctx)

    asyncio.run(scenario())
