"""Kiln's Java kernel: ipykernel's kernel base (the Jupyter protocol) in
front of KilnJShell (JShell, next to this file), which evaluates the cells.

    python3 kiln_java_kernel.py -f <connection_file>

A cell's printed output streams as it is written, the value of its last
expression is its result, and an exception or a compilation error is its
error. Interrupts (SIGINT to the kernel's process group) stop the running
snippet; the context keeps its state. When the JVM exits (System.exit), the
cell's error says so and the next cell runs in a new one.
"""

import base64
import os
import shutil
import signal
import subprocess
import sys

from ipykernel.kernelbase import Kernel

HERE = os.path.dirname(os.path.abspath(__file__))


def _decode(field):
    return base64.b64decode(field).decode("utf-8", errors="replace")


class KilnJavaKernel(Kernel):
    implementation = "kiln-java"
    implementation_version = "1"
    language = "java"
    language_info = {
        "name": "java",
        "mimetype": "text/x-java-source",
        "file_extension": ".java",
    }
    banner = "Java (JShell) for Kiln"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.jvm = None
        self._start_jvm()

    def _start_jvm(self):
        java = shutil.which("java") or "java"
        # ipykernel ignores SIGINT between cells, and an ignored signal stays
        # ignored across exec: the JVM could not take interrupts. A Python
        # handler does not survive exec, so the JVM starts with the default.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.jvm = subprocess.Popen(
                [java, "-XX:+UseSerialGC", "-cp", HERE, "KilnJShell"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        finally:
            signal.signal(signal.SIGINT, previous)

    def _next_event(self):
        """The JVM's next message as (kind, fields); ("exit", []) at its end."""
        line = self.jvm.stdout.readline()
        if not line:
            return "exit", []
        kind, *fields = line.decode("ascii").rstrip("\n").split(" ")
        return kind, [_decode(f) for f in fields]

    def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kwargs):
        self.jvm.stdin.write(b"exec " + base64.b64encode(code.encode("utf-8")) + b"\n")
        self.jvm.stdin.flush()
        error = None
        interrupted = False
        while True:
            try:
                kind, fields = self._next_event()
            except KeyboardInterrupt:
                # The JVM got the SIGINT too and stops the snippet; read on
                # until it says the cell is over.
                interrupted = True
                continue
            if kind == "done":
                break
            if kind in ("out", "err") and not silent:
                name = "stdout" if kind == "out" else "stderr"
                self.send_response(self.iopub_socket, "stream", {"name": name, "text": fields[0]})
            elif kind == "value" and not silent:
                self.send_response(
                    self.iopub_socket,
                    "execute_result",
                    {
                        "execution_count": self.execution_count,
                        "data": {"text/plain": fields[0]},
                        "metadata": {},
                    },
                )
            elif kind == "error" and error is None:
                name, value, trace = fields
                error = {"ename": name, "evalue": value, "traceback": trace.splitlines()}
            elif kind == "exit":
                status = self.jvm.wait()
                self._start_jvm()
                error = {
                    "ename": "JVMExited",
                    "evalue": f"the Java process exited ({status}); a new one was started, without the earlier state",
                    "traceback": [],
                }
                break
        if error is not None:
            if not silent:
                self.send_response(self.iopub_socket, "error", error)
            return {"status": "error", "execution_count": self.execution_count, **error}
        if interrupted:
            return {"status": "abort", "execution_count": self.execution_count}
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

    def do_shutdown(self, restart):
        if self.jvm.poll() is None:
            self.jvm.kill()
        return {"status": "ok", "restart": restart}


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=sys.argv[1:], kernel_class=KilnJavaKernel)
