package io.alliedium.ignite.ml;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.ignite.Ignite;
import org.apache.ignite.IgniteCache;
import org.apache.ignite.IgniteDataStreamer;
import org.apache.ignite.Ignition;
import org.apache.ignite.cache.CacheAtomicityMode;
import org.apache.ignite.cache.CacheMode;
import org.apache.ignite.cache.affinity.rendezvous.RendezvousAffinityFunction;
import org.apache.ignite.configuration.CacheConfiguration;
import org.apache.ignite.ml.dataset.feature.extractor.Vectorizer;
import org.apache.ignite.ml.dataset.feature.extractor.impl.DoubleArrayVectorizer;
import org.apache.ignite.ml.math.primitives.vector.VectorUtils;
import org.apache.ignite.ml.multiclass.MultiClassModel;
import org.apache.ignite.ml.multiclass.OneVsRestTrainer;
import org.apache.ignite.ml.regressions.logistic.LogisticRegressionModel;
import org.apache.ignite.ml.regressions.logistic.LogisticRegressionSGDTrainer;

/**
 * The Apache Ignite ML side of `alliedium bench compare`: {@link LogisticRegressionSGDTrainer} (one-vs-rest for
 * more than two classes) trained on the comparison's shared arrays, either from local arrays (Ignite ML's
 * {@code LocalDatasetBuilder}) or from an Ignite cache on the cluster, so the cost of the distributed path shows.
 *
 * Python (alliedium.bench.ignite_ml) reaches this class through the thick client's py4j gateway and calls only
 * static methods. Arrays travel as little-endian float64 bytes (py4j copies byte[] in one piece). Fits run on a
 * worker thread and return a {@link CompletableFuture}, so a long fit never hits the gateway's call timeout.
 * Every class the servers run for the cache path is Ignite ML's own (peer class loading is off).
 */
public final class LogisticSgdBench {
    private LogisticSgdBench() { }

    /** Data sets loaded from Python, by name: rows of [label, features...]. */
    private static final Map<String, double[][]> ROWS = new ConcurrentHashMap<>();

    /** Rows of [label, features...] from float64 little-endian bytes (x row-major rows*cols, y rows). */
    static double[][] rows(byte[] x, byte[] y, int rows, int cols) {
        if (x.length != 8L * rows * cols || y.length != 8L * rows)
            throw new IllegalArgumentException("expected " + rows + "x" + cols + " float64 features and " + rows + " labels");
        ByteBuffer bx = ByteBuffer.wrap(x).order(ByteOrder.LITTLE_ENDIAN), by = ByteBuffer.wrap(y).order(ByteOrder.LITTLE_ENDIAN);
        double[][] out = new double[rows][cols + 1];
        for (int i = 0; i < rows; i++) {
            out[i][0] = by.getDouble();
            for (int j = 1; j <= cols; j++) out[i][j] = bx.getDouble();
        }
        return out;
    }

    /** Keep a data set in this JVM under {@code name}; returns its row count. */
    public static int load(String name, byte[] x, byte[] y, int rows, int cols) {
        ROWS.put(name, rows(x, y, rows, cols));
        return rows;
    }

    /** Forget a data set (and destroy its cache if one was made). */
    public static void drop(String name) {
        ROWS.remove(name);
        Ignite ignite = igniteOrNull();
        if (ignite != null && ignite.cacheNames().contains(cacheName(name))) ignite.destroyCache(cacheName(name));
    }

    static double[][] data(String name) {
        double[][] d = ROWS.get(name);
        if (d == null) throw new IllegalArgumentException("no data set " + name + " loaded: call load() first");
        return d;
    }

    /** The thick client node this gateway JVM runs (the gateway starts exactly one). */
    static Ignite igniteOrNull() {
        List<Ignite> grids = Ignition.allGrids();
        return grids.isEmpty() ? null : grids.get(0);
    }

    static String cacheName(String name) { return "ALLIEDIUM_BENCH_" + name.replaceAll("[^A-Za-z0-9_]", "_"); }

    /** The trainer with Ignite ML's defaults (SimpleGD with learning rate 0.2, batch 100, 100 local steps) and a seed. */
    static OneVsRestTrainer<LogisticRegressionModel> trainer(int maxIterations, long seed) {
        return new OneVsRestTrainer<>(new LogisticRegressionSGDTrainer().withMaxIterations(maxIterations).withSeed(seed));
    }

    static Vectorizer<Integer, double[], Integer, Double> vectorizer() {
        return new DoubleArrayVectorizer<Integer>().labeled(Vectorizer.LabelCoordinate.FIRST);
    }

    /** Predict every row of {@code test}: [fit seconds, predict seconds, predictions...] as float64 LE bytes. */
    static byte[] result(MultiClassModel<LogisticRegressionModel> model, double fitSeconds, double[][] test, int classes) {
        for (int c = 0; c < classes; c++) model.getModel((double)c).ifPresent(m -> m.withRawLabels(true));  // argmax of scores
        long t = System.nanoTime();
        double[] pred = new double[test.length];
        for (int i = 0; i < test.length; i++)
            pred[i] = model.predict(VectorUtils.of(java.util.Arrays.copyOfRange(test[i], 1, test[i].length)));
        double predictSeconds = (System.nanoTime() - t) / 1e9;
        ByteBuffer out = ByteBuffer.allocate(8 * (2 + pred.length)).order(ByteOrder.LITTLE_ENDIAN);
        out.putDouble(fitSeconds).putDouble(predictSeconds);
        for (double p : pred) out.putDouble(p);
        return out.array();
    }

    /** Train from the local arrays {@code train} (Ignite ML's LocalDatasetBuilder, {@code parts} partitions). */
    public static CompletableFuture<byte[]> fitLocal(String train, String test, int classes, int parts, int maxIterations, long seed) {
        return CompletableFuture.supplyAsync(() -> {
            double[][] rows = data(train);
            Map<Integer, double[]> upstream = new HashMap<>();
            for (int i = 0; i < rows.length; i++) upstream.put(i, rows[i]);
            long t = System.nanoTime();
            MultiClassModel<LogisticRegressionModel> model = trainer(maxIterations, seed).fit(upstream, parts, vectorizer());
            return result(model, (System.nanoTime() - t) / 1e9, data(test), classes);
        });
    }

    /** Put the data set {@code train} into a cache on the cluster ({@code parts} partitions); returns the seconds it took. */
    public static double loadCache(String train, int parts) {
        Ignite ignite = igniteOrNull();
        if (ignite == null) throw new IllegalStateException("no Ignite node in this JVM: run through the thick client's gateway");
        long t = System.nanoTime();
        String cache = cacheName(train);
        if (ignite.cacheNames().contains(cache)) ignite.destroyCache(cache);
        CacheConfiguration<Integer, double[]> cfg = new CacheConfiguration<Integer, double[]>(cache)
            .setCacheMode(CacheMode.PARTITIONED).setAtomicityMode(CacheAtomicityMode.ATOMIC).setBackups(0)
            .setAffinity(new RendezvousAffinityFunction(false, parts));
        ignite.createCache(cfg);
        double[][] rows = data(train);
        try (IgniteDataStreamer<Integer, double[]> s = ignite.dataStreamer(cache)) {
            for (int i = 0; i < rows.length; i++) s.addData(i, rows[i]);
        }
        return (System.nanoTime() - t) / 1e9;
    }

    /** Train from the cache {@code loadCache} filled: the dataset is built and the SGD steps run on the server nodes. */
    public static CompletableFuture<byte[]> fitCache(String train, String test, int classes, int maxIterations, long seed) {
        return CompletableFuture.supplyAsync(() -> {
            Ignite ignite = igniteOrNull();
            IgniteCache<Integer, double[]> cache = ignite.cache(cacheName(train));
            if (cache == null) throw new IllegalStateException("no cache for " + train + ": call loadCache() first");
            long t = System.nanoTime();
            MultiClassModel<LogisticRegressionModel> model = trainer(maxIterations, seed).fit(ignite, cache, vectorizer());
            return result(model, (System.nanoTime() - t) / 1e9, data(test), classes);
        });
    }
}
