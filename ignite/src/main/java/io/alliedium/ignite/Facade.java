package io.alliedium.ignite;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

import org.apache.ignite.Ignite;
import org.apache.ignite.IgniteClientDisconnectedException;
import org.apache.ignite.IgniteException;
import org.apache.ignite.binary.BinaryObject;
import org.apache.ignite.cluster.BaselineNode;
import org.apache.ignite.cluster.ClusterGroupEmptyException;
import org.apache.ignite.cluster.ClusterNode;
import org.apache.ignite.cluster.ClusterTopologyException;
import org.apache.ignite.compute.ComputeTaskTimeoutException;
import org.apache.ignite.internal.util.typedef.X;
import org.apache.ignite.lang.IgniteBiPredicate;
import org.apache.ignite.lang.IgniteCallable;
import org.apache.ignite.lang.IgniteFuture;
import org.apache.ignite.lang.IgniteFutureTimeoutException;

/**
 * What Python sees of the thick client: a narrow API of strings and numbers (results are JSON strings).
 *
 * Jobs are asynchronous: `submit*` returns a job id at once and `await(id, waitMs)` waits at most `waitMs`
 * (null while the job runs), so no call from Python blocks for long. A job whose node leaves is failed over
 * by Ignite (affinity jobs go to the partition's new primary); if the failure reaches us (the client lost its
 * router, or Ignite's failover attempts ran out) the job is submitted again until its deadline.
 */
public class Facade {
    private static final int MAX_RESUBMITS = 5;

    private final Ignite ignite;
    private final long noServersMs;
    private final Map<String, Job> jobs = new ConcurrentHashMap<>();
    private final Map<String, TopicQueue> topics = new ConcurrentHashMap<>();
    private volatile Runnable onShutdown = () -> { };

    public Facade(Ignite ignite, long noServersMs) {
        this.ignite = ignite;
        this.noServersMs = noServersMs;
    }

    void onShutdown(Runnable r) { onShutdown = r; }

    public String ping() { return "pong"; }

    public String localNode() { return String.valueOf(ignite.cluster().localNode().consistentId()); }

    /** Servers (consistent id, order), client count, Ignite version, baseline. */
    public String topology() {
        StringBuilder servers = new StringBuilder("[");
        for (ClusterNode n : ignite.cluster().forServers().nodes()) {
            if (servers.length() > 1) servers.append(',');
            servers.append(new Json().put("consistent_id", String.valueOf(n.consistentId())).put("order", n.order()));
        }
        StringBuilder baseline = new StringBuilder("[");
        Collection<BaselineNode> bl = ignite.cluster().currentBaselineTopology();
        if (bl != null) for (BaselineNode n : bl) {
            if (baseline.length() > 1) baseline.append(',');
            baseline.append(Json.quote(String.valueOf(n.consistentId())));
        }
        return new Json().put("version", ignite.version().toString()).put("local", localNode())
            .put("active", ignite.cluster().state().active())
            .raw("servers", servers.append(']').toString()).raw("baseline", baseline.append(']').toString())
            .put("clients", ignite.cluster().forClients().nodes().size()).toString();
    }

    /** Make the running server nodes the baseline (after adding a node to a persistent cluster). */
    public String setBaselineToCurrent() {
        ignite.cluster().setBaselineTopology(ignite.cluster().topologyVersion());
        return topology();
    }

    /** Consistent id of the primary node of `affinityKey` in `cache` (a plain key is its own affinity key, as in affinityCall). */
    public String primaryNode(String cache, String affinityKey) {
        ClusterNode n = ignite.affinity(cache).mapKeyToNode(affinityKey);
        return n == null ? null : String.valueOf(n.consistentId());
    }

    public int partition(String cache, String affinityKey) { return ignite.affinity(cache).partition(affinityKey); }

    /** Primary node of a real TICKET key (binary alliedium.TicketKey): checks the affinity field is honoured. */
    public String ticketKeyNode(String cache, String tenant, String issueKey) {
        ignite.cache(cache);  // the client learns the cache's key configuration (affinity field TENANT_ID)
        BinaryObject key = ignite.binary().builder("alliedium.TicketKey")
            .setField("TENANT_ID", tenant).setField("ISSUE_KEY", issueKey).build();
        ClusterNode n = ignite.affinity(cache).mapKeyToNode(key);
        return n == null ? null : String.valueOf(n.consistentId());
    }

    /**
     * TDE: make `name` the master key (null: leave it) on a server node, which rolls it out cluster-wide;
     * the master key name in use afterwards.
     */
    public String masterKey(String name, long timeoutMs) {
        return ignite.compute(ignite.cluster().forServers().forRandom()).withTimeout(timeoutMs).call(new MasterKeyJob(name));
    }

    /** A checkpoint on every server node, waited for; the nodes' consistent ids. */
    public String checkpoint(long timeoutMs) {
        return String.valueOf(ignite.compute(ignite.cluster().forServers()).withTimeout(timeoutMs)
            .broadcast(new CheckpointJob()));
    }

    public String submitNoop(String cache, String tenant, long timeoutMs) {
        return submit(cache, tenant, new NoopJob(), timeoutMs, timeoutMs);
    }

    /** Run `entry` (alliedium.<module>:<function>) for `tenant` on the node owning the tenant's partition. */
    public String submitPython(String cache, String tenant, String entry, String kwargsJson, Map<String, String> env,
                               long timeoutMs) {
        // the compute timeout is a backstop: the job itself kills its process at timeoutMs and reports it
        return submit(cache, tenant, new PythonJob(tenant, entry, kwargsJson, env, timeoutMs), timeoutMs, timeoutMs + 30_000);
    }

    private String submit(String cache, String tenant, IgniteCallable<String> job, long jobMs, long deadlineMs) {
        Job j = new Job(cache, tenant, job, System.currentTimeMillis() + deadlineMs);
        String id = UUID.randomUUID().toString();
        jobs.put(id, j);
        j.submit();  // a failure here is retried by await, within the job's deadline
        return id;
    }

    /** The job's result JSON, or null if it still runs after `waitMs`. The id is forgotten once answered. */
    public String await(String id, long waitMs) {
        Job j = jobs.get(id);
        if (j == null) return Json.error("UnknownJob", "no job " + id + " (already answered or never submitted)", null);
        String r = j.await(waitMs);
        if (r != null) jobs.remove(id);
        return r;
    }

    public boolean cancel(String id) {
        Job j = jobs.remove(id);
        if (j == null) return false;
        IgniteFuture<String> f = j.future;
        return f != null && f.cancel();
    }

    public int runningJobs() { return jobs.size(); }

    /** A job and its resubmissions. */
    private final class Job {
        final String cache, tenant;
        final IgniteCallable<String> callable;
        final long deadline;
        volatile IgniteFuture<String> future;
        int failures;
        long unavailableSince = -1;
        Throwable lastError;

        Job(String cache, String tenant, IgniteCallable<String> callable, long deadline) {
            this.cache = cache; this.tenant = tenant; this.callable = callable; this.deadline = deadline;
        }

        /** Send the job; on failure (no server, client disconnected) `future` stays null and await retries. */
        void submit() {
            try {
                if (ignite.cluster().forServers().nodes().isEmpty()) throw new ClusterGroupEmptyException("no server node");
                long left = Math.max(1, deadline - System.currentTimeMillis());
                future = ignite.compute().withTimeout(left).affinityCallAsync(cache, tenant, callable);
                unavailableSince = -1;
            }
            catch (IgniteException e) {
                future = null; lastError = e;
                if (unavailableSince < 0) unavailableSince = System.currentTimeMillis();
            }
        }

        synchronized String await(long waitMs) {
            long end = System.currentTimeMillis() + waitMs;
            while (true) {
                long now = System.currentTimeMillis();
                if (future == null) {
                    if (now >= deadline) return timeout();
                    submit();
                    if (future != null) continue;
                    if (now - unavailableSince >= noServersMs)
                        return Json.error("ClusterUnavailable", "no server node could take the job for "
                            + (now - unavailableSince) / 1000 + "s: " + lastError, null);
                    if (now >= end) return null;
                    sleep(Math.min(200, end - now));
                    continue;
                }
                try {
                    return future.get(Math.max(1, end - now), TimeUnit.MILLISECONDS);
                }
                catch (IgniteFutureTimeoutException e) {
                    return System.currentTimeMillis() >= deadline + 5_000 ? timeout() : null;
                }
                catch (IgniteException e) {
                    if (X.hasCause(e, ComputeTaskTimeoutException.class)) return timeout();
                    if (X.hasCause(e, ClusterTopologyException.class, IgniteClientDisconnectedException.class,
                        ClusterGroupEmptyException.class)) {
                        lastError = e; future = null;  // submitted again on the next turn of the loop
                        if (++failures > MAX_RESUBMITS)
                            return Json.error("JobLost", "the job's node left " + failures + " times: " + e, null);
                        unavailableSince = System.currentTimeMillis();
                        continue;
                    }
                    return Json.error(e.getClass().getSimpleName(), String.valueOf(X.getFullStackTrace(e)).lines()
                        .limit(12).reduce((a, b) -> a + "\n" + b).orElse(""), null);
                }
            }
        }

        String timeout() {
            IgniteFuture<String> f = future;
            if (f != null) f.cancel();
            return Json.error("JobTimeout", "the job for tenant " + tenant + " did not finish in time", null);
        }
    }

    private static void sleep(long ms) {
        try { Thread.sleep(Math.max(1, ms)); }
        catch (InterruptedException e) { Thread.currentThread().interrupt(); }
    }

    // ---- messaging -------------------------------------------------------------------------------------

    /** Queue of the messages received on one topic (a local listener fills it). */
    static final class TopicQueue implements IgniteBiPredicate<UUID, Object> {
        private static final long serialVersionUID = 1L;
        final transient LinkedBlockingQueue<String> queue = new LinkedBlockingQueue<>(100_000);
        volatile boolean active = true;

        @Override public boolean apply(UUID nodeId, Object msg) {
            if (active) queue.offer(String.valueOf(msg));
            return active;
        }
    }

    public void subscribe(String topic) {
        topics.computeIfAbsent(topic, t -> {
            TopicQueue q = new TopicQueue();
            ignite.message().localListen(t, q);
            return q;
        });
    }

    public void unsubscribe(String topic) {
        TopicQueue q = topics.remove(topic);
        if (q != null) { q.active = false; ignite.message().stopLocalListen(topic, q); }
    }

    /** Up to `max` messages received on `topic` as a JSON array of strings, waiting up to `waitMs` for the first. */
    public String poll(String topic, long waitMs, int max) throws InterruptedException {
        TopicQueue q = topics.get(topic);
        if (q == null) throw new IllegalStateException("not subscribed to topic " + topic);
        List<String> out = new ArrayList<>();
        String first = q.queue.poll(waitMs, TimeUnit.MILLISECONDS);
        if (first != null) { out.add(first); q.queue.drainTo(out, max - 1); }
        StringBuilder sb = new StringBuilder("[");
        for (String m : out) { if (sb.length() > 1) sb.append(','); sb.append(Json.quote(m)); }
        return sb.append(']').toString();
    }

    /** Send `message` on `topic` to every client node (subscribers are clients; this one included). */
    public void publish(String topic, String message) {
        ignite.message(ignite.cluster().forClients()).send(topic, message);
    }

    /** Stop the client node and this JVM (asynchronously, so this call can still answer). */
    public void shutdown() {
        Thread t = new Thread(onShutdown, "alliedium-gateway-shutdown");
        t.setDaemon(false);
        t.start();
    }
}
