// Kiln's Java evaluator: JShell (jdk.jshell, in-process execution) behind a
// line protocol on stdin/stdout, driven by kiln_java_kernel.py (the Jupyter
// side). Each field is base64 (UTF-8), fields are separated by one space:
//
//   in:  exec <code>
//   out: out <text> | err <text>        what the cell printed, per write
//        value <text>                   the value of the cell's last expression
//        error <name> <message> <trace> the first failure; the cell stops there
//        done                           the cell is over
//
// System.out and System.err of user code become `out`/`err` messages. The
// process's environment is copied into the system properties (where they are
// not set already), so System.getProperty reads a sandbox's variables as on
// E2B. SIGINT stops the running snippet.

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Collectors;

import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.ExpressionSnippet;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.VarSnippet;

public final class KilnJShell {
    private static PrintStream protocol;

    private static String b64(String s) {
        return Base64.getEncoder().encodeToString(s.getBytes(StandardCharsets.UTF_8));
    }

    static synchronized void emit(String kind, String... fields) {
        StringBuilder line = new StringBuilder(kind);
        for (String f : fields) {
            line.append(' ').append(b64(f == null ? "" : f));
        }
        protocol.print(line.append('\n'));
        protocol.flush();
    }

    /** An output stream whose every write is one message. */
    private static final class Forward extends OutputStream {
        private final String kind;

        Forward(String kind) {
            this.kind = kind;
        }

        @Override
        public void write(int b) {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public void write(byte[] b, int off, int len) {
            if (len > 0) {
                emit(kind, new String(b, off, len, StandardCharsets.UTF_8));
            }
        }
    }

    /** A failure of the cell: name, message, trace. */
    private record Failure(String name, String message, String trace) {}

    public static void main(String[] args) throws Exception {
        protocol = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        // A subclass, so that println writes the text and the line end apart
        // (one message each), as IJava's output does.
        System.setOut(new PrintStream(new Forward("out"), true, StandardCharsets.UTF_8) {});
        System.setErr(new PrintStream(new Forward("err"), true, StandardCharsets.UTF_8) {});
        for (Map.Entry<String, String> e : System.getenv().entrySet()) {
            if (System.getProperty(e.getKey()) == null) {
                System.setProperty(e.getKey(), e.getValue());
            }
        }
        JShell shell = JShell.builder().executionEngine("local").build();
        // The first evaluation loads the compiler (about a second): do it now,
        // while the kernel starts, rather than in the first cell.
        for (SnippetEvent warm : shell.eval("Integer.toString(0);")) {
            shell.drop(warm.snippet());
        }
        try {
            sun.misc.Signal.handle(new sun.misc.Signal("INT"), signal -> shell.stop());
        } catch (IllegalArgumentException e) {
            // No SIGINT handling here: interrupts end the process instead.
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] parts = line.split(" ", -1);
            if (parts.length == 2 && parts[0].equals("exec")) {
                String code = new String(Base64.getDecoder().decode(parts[1]), StandardCharsets.UTF_8);
                try {
                    run(shell, code);
                } catch (RuntimeException e) {
                    emit("error", e.getClass().getName(), String.valueOf(e.getMessage()), trace(e));
                }
            }
            emit("done");
        }
    }

    private static void run(JShell shell, String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String remaining = code;
        String value = null;
        while (!remaining.isBlank()) {
            SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(remaining);
            String source;
            switch (info.completeness()) {
                case EMPTY:
                    remaining = "";
                    continue;
                case DEFINITELY_INCOMPLETE:
                case CONSIDERED_INCOMPLETE:
                    // Evaluated whole, so that the compiler says what is missing.
                    source = remaining;
                    remaining = "";
                    break;
                default:
                    source = info.source();
                    remaining = info.remaining();
                    break;
            }
            value = null;
            for (SnippetEvent event : shell.eval(source)) {
                Failure failure = failure(shell, event);
                if (failure != null) {
                    emit("error", failure.name(), failure.message(), failure.trace());
                    return;
                }
                if (event.causeSnippet() == null && event.value() != null) {
                    String type = valueType(event.snippet());
                    if (type != null) {
                        value = type.equals("String") ? unquote(event.value()) : event.value();
                    }
                }
            }
        }
        if (value != null) {
            emit("value", value);
        }
    }

    /** The type of an expression's value; null for declarations and void. */
    private static String valueType(Snippet snippet) {
        String type;
        if (snippet instanceof VarSnippet v) {
            type = v.typeName();
        } else if (snippet instanceof ExpressionSnippet e) {
            type = e.typeName();
        } else {
            return null;
        }
        switch (snippet.subKind()) {
            case TEMP_VAR_EXPRESSION_SUBKIND:
            case VAR_VALUE_SUBKIND:
            case ASSIGNMENT_SUBKIND:
            case OTHER_EXPRESSION_SUBKIND:
                return type.equals("void") ? null : type;
            default:
                return null;
        }
    }

    /** JShell shows a String as a Java literal: the text itself instead. */
    static String unquote(String literal) {
        if (literal.length() < 2 || !literal.startsWith("\"") || !literal.endsWith("\"")) {
            return literal;
        }
        StringBuilder out = new StringBuilder();
        String body = literal.substring(1, literal.length() - 1);
        for (int i = 0; i < body.length(); i++) {
            char c = body.charAt(i);
            if (c != '\\' || i + 1 == body.length()) {
                out.append(c);
                continue;
            }
            char e = body.charAt(++i);
            switch (e) {
                case 'n' -> out.append('\n');
                case 't' -> out.append('\t');
                case 'r' -> out.append('\r');
                case 'b' -> out.append('\b');
                case 'f' -> out.append('\f');
                case 's' -> out.append(' ');
                case 'u' -> {
                    int end = Math.min(i + 5, body.length());
                    int at = i + 1;
                    while (at < body.length() && body.charAt(at) == 'u') {
                        at++;
                        end = Math.min(at + 4, body.length());
                    }
                    try {
                        out.append((char) Integer.parseInt(body.substring(at, end), 16));
                        i = end - 1;
                    } catch (NumberFormatException x) {
                        out.append('\\').append(e);
                    }
                }
                default -> {
                    if (e >= '0' && e <= '7') {
                        int end = i;
                        while (end < body.length() && end < i + 3 && body.charAt(end) >= '0' && body.charAt(end) <= '7') {
                            end++;
                        }
                        out.append((char) Integer.parseInt(body.substring(i, end), 8));
                        i = end - 1;
                    } else {
                        out.append(e); // \" \' \\
                    }
                }
            }
        }
        return out.toString();
    }

    private static Failure failure(JShell shell, SnippetEvent event) {
        JShellException exception = event.exception();
        if (exception instanceof EvalException e) {
            // The trace of the user's exception, under its own name.
            StringBuilder trace = new StringBuilder(e.getExceptionClassName());
            if (e.getMessage() != null) {
                trace.append(": ").append(e.getMessage());
            }
            for (StackTraceElement frame : e.getStackTrace()) {
                trace.append("\n\tat ").append(frame);
            }
            return new Failure(e.getExceptionClassName(), String.valueOf(e.getMessage()), trace.toString());
        }
        if (exception instanceof UnresolvedReferenceException e) {
            String names = shell.unresolvedDependencies(e.getSnippet()).collect(Collectors.joining(", "));
            return new Failure("UnresolvedReferenceException",
                    "the snippet refers to what is not defined: " + names, trace(e));
        }
        if (exception != null) {
            return new Failure(exception.getClass().getName(), String.valueOf(exception.getMessage()), trace(exception));
        }
        if (event.status() == Snippet.Status.REJECTED) {
            List<String> messages = new ArrayList<>();
            for (Diag diag : shell.diagnostics(event.snippet()).collect(Collectors.toList())) {
                if (diag.isError()) {
                    messages.add(diag.getMessage(Locale.ROOT));
                }
            }
            String message = messages.isEmpty() ? "the snippet was rejected" : String.join("\n", messages);
            return new Failure("CompilationException", message, event.snippet().source() + "\n" + message);
        }
        return null;
    }

    private static String trace(Throwable t) {
        StringWriter out = new StringWriter();
        t.printStackTrace(new PrintWriter(out));
        return out.toString();
    }
}
