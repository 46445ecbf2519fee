package io.alliedium.ignite;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.apache.ignite.Ignite;
import org.apache.ignite.compute.ComputeJobMasterLeaveAware;
import org.apache.ignite.compute.ComputeTaskSession;
import org.apache.ignite.configuration.ClientConnectorConfiguration;
import org.apache.ignite.lang.IgniteCallable;
import org.apache.ignite.resources.IgniteInstanceResource;

/**
 * Runs a Python entry point of the alliedium package for one tenant, as a child process of the server
 * node it is sent to (the node holding the tenant's partition), and returns what it printed.
 *
 * The child runs `alliedium.thick.job_main`, which prints one line `ALLIEDIUM_JOB_RESULT <json>`.
 * The Python is the node's system property `alliedium.python` (set by `alliedium ignite start`), else
 * the environment variable ALLIEDIUM_JOB_PYTHON, else `python3`; the working directory is `alliedium.home`.
 * The entry point must be one of {@link #ENTRIES}; the caller's environment variables are added to the node's
 * own only when allowed ({@link #ENV_NAMES}, {@link #ENV_PREFIXES}: never LD_PRELOAD, PYTHON*, the Ignite
 * address or credentials), else the job is refused. The child talks to Ignite through this node's own
 * thin-client port, always; it inherits the node's environment (its ALLIEDIUM_* settings and secrets).
 * A job that outlives its timeout, is cancelled, or whose caller leaves the cluster has its process tree killed.
 */
public class PythonJob implements IgniteCallable<String>, ComputeJobMasterLeaveAware {
    private static final long serialVersionUID = 1L;
    static final String RESULT_PREFIX = "ALLIEDIUM_JOB_RESULT ";
    /** The only entry points a caller may run (alliedium.thick.JOB_ENTRIES is the same list). */
    static final Set<String> ENTRIES = Set.of("alliedium.training:train_tenant", "alliedium.thick:probe_job");
    /** Environment variables a caller may set for the child, by name or prefix (alliedium.thick.JOB_ENV_*). */
    static final Set<String> ENV_NAMES = Set.of("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TZ",
                                                "LANG", "LC_ALL");
    static final List<String> ENV_PREFIXES = List.of("ALLIEDIUM_TRAIN_", "ALLIEDIUM_ASSIGNEE_", "ALLIEDIUM_PROMOTE_");
    private static final Pattern ENV_VALUE = Pattern.compile("[^\\x00]{0,4096}");
    private static final String BOOT = "import sys; from alliedium.thick import job_main; sys.exit(job_main(sys.argv[1:]))";
    private static final int STDERR_TAIL = 4000;

    private final String tenant;
    private final String entry;
    private final String kwargsJson;
    private final HashMap<String, String> env;
    private final long timeoutMs;

    @IgniteInstanceResource
    private transient Ignite ignite;
    private transient volatile Process proc;
    private transient volatile boolean masterLeft;

    public PythonJob(String tenant, String entry, String kwargsJson, Map<String, String> env, long timeoutMs) {
        this.tenant = tenant;
        this.entry = entry;
        this.kwargsJson = kwargsJson == null ? "{}" : kwargsJson;
        this.env = env == null ? new HashMap<>() : new HashMap<>(env);
        this.timeoutMs = timeoutMs;
    }

    static String python() {
        String p = System.getProperty("alliedium.python");
        if (p == null || p.isEmpty()) p = System.getenv("ALLIEDIUM_JOB_PYTHON");
        return p == null || p.isEmpty() ? "python3" : p;
    }

    private String thinClientAddress() {
        ClientConnectorConfiguration cc = ignite.configuration().getClientConnectorConfiguration();
        if (cc == null) return null;
        String host = cc.getHost() != null ? cc.getHost() : ignite.configuration().getLocalHost();
        return (host == null ? "127.0.0.1" : host) + ":" + cc.getPort();
    }

    @Override public String call() throws Exception {
        String node = String.valueOf(ignite.cluster().localNode().consistentId());
        if (!ENTRIES.contains(entry))
            return Json.error("BadEntry", "entry point " + entry + " is not one of " + new TreeSet<>(ENTRIES), node);
        for (Map.Entry<String, String> e : env.entrySet())
            if (!envAllowed(e.getKey()) || e.getValue() == null || !ENV_VALUE.matcher(e.getValue()).matches())
                return Json.error("BadEnv", "environment variable " + e.getKey() + " may not be set for a job (allowed: "
                    + new TreeSet<>(ENV_NAMES) + " and names starting with " + ENV_PREFIXES + ")", node);
        long t0 = System.nanoTime();
        Path work = Paths.get(ignite.configuration().getWorkDirectory(), "alliedium-jobs");
        Files.createDirectories(work);
        Path dir = Files.createTempDirectory(work, "job-");
        try {
            ProcessBuilder pb = new ProcessBuilder(List.of(python(), "-c", BOOT, "--entry", entry, "--tenant", tenant,
                "--kwargs", kwargsJson))
                .directory(new File(System.getProperty("alliedium.home", ".")))
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                .redirectOutput(dir.resolve("stdout").toFile())
                .redirectError(dir.resolve("stderr").toFile());
            pb.environment().putAll(env);
            String thin = thinClientAddress();  // always this node's own: a caller cannot point the job elsewhere
            if (thin != null) pb.environment().put("ALLIEDIUM_IGNITE_HOSTS", thin);
            else pb.environment().remove("ALLIEDIUM_IGNITE_HOSTS");
            try { proc = pb.start(); }
            catch (IOException e) {
                return Json.error("PythonNotFound", "cannot start " + python() + " on node " + node + ": " + e.getMessage()
                    + " (set -Dalliedium.python or ALLIEDIUM_JOB_PYTHON on the server nodes)", node);
            }
            boolean done = false, timedOut = false, cancelled = false;
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
            try {
                while (!(done = proc.waitFor(100, TimeUnit.MILLISECONDS))) {
                    if (masterLeft) { cancelled = true; break; }
                    if (System.nanoTime() >= deadline) { timedOut = true; break; }
                }
            }
            catch (InterruptedException e) { cancelled = true; Thread.currentThread().interrupt(); }
            if (!done) kill(proc);
            long millis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            Json out = new Json().put("ok", done && proc.exitValue() == 0).put("node", node).put("millis", millis)
                .put("timed_out", timedOut).put("cancelled", cancelled);
            if (done) out.put("exit", proc.exitValue());
            return out.put("result_line", resultLine(dir.resolve("stdout")))
                .put("stderr", tail(dir.resolve("stderr"), STDERR_TAIL)).toString();
        }
        finally {
            try (Stream<Path> s = Files.walk(dir)) { s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete()); }
            catch (IOException ignored) { }
        }
    }

    static boolean envAllowed(String name) {
        if (name == null) return false;
        if (ENV_NAMES.contains(name)) return true;
        for (String p : ENV_PREFIXES) if (name.startsWith(p) && name.length() > p.length()) return true;
        return false;
    }

    static void kill(Process p) {
        p.descendants().forEach(ProcessHandle::destroyForcibly);
        p.destroyForcibly();
        try { p.waitFor(10, TimeUnit.SECONDS); }
        catch (InterruptedException e) { Thread.currentThread().interrupt(); }
    }

    private static String resultLine(Path stdout) throws IOException {
        String found = null;
        try (BufferedReader r = Files.newBufferedReader(stdout, StandardCharsets.UTF_8)) {
            for (String line; (line = r.readLine()) != null; )
                if (line.startsWith(RESULT_PREFIX)) found = line.substring(RESULT_PREFIX.length());
        }
        catch (java.nio.charset.MalformedInputException e) { return null; }
        return found;
    }

    private static String tail(Path file, int chars) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
            long start = Math.max(0, f.length() - chars);
            byte[] b = new byte[(int) (f.length() - start)];
            f.seek(start);
            f.readFully(b);
            return new String(b, StandardCharsets.UTF_8);
        }
    }

    /** The caller left the cluster: nobody waits for the result, so stop the child now. */
    @Override public void onMasterNodeLeft(ComputeTaskSession ses) {
        masterLeft = true;
        Process p = proc;
        if (p != null) kill(p);
    }
}
