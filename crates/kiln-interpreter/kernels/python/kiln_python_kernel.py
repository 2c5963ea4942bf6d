"""Kiln's Python kernel: ipykernel, configured as E2B's code-interpreter
template configures it, with Kiln's IPython extension (kiln_ipython) loaded.

Its kernelspec runs it as a script (`python3 kiln_python_kernel.py -f
{connection_file}`), so that the extension next to it is importable without
touching the user's PYTHONPATH.
"""

import sys

if __name__ == "__main__":
    # ipykernel_launcher drops the script's own directory from sys.path when
    # it is the cwd (""); here it is this directory, which the extension
    # needs, so it stays.
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    config = Config()
    config.InteractiveShellApp.extra_extensions = ["kiln_ipython"]
    # Tracebacks without ANSI colours, and long sequences shown whole.
    config.InteractiveShell.colors = "NoColor"
    config.PlainTextFormatter.max_seq_length = 0
    IPKernelApp.launch_instance(argv=sys.argv[1:], config=config)
