package io.alliedium.ignite;

import org.apache.ignite.Ignite;
import org.apache.ignite.lang.IgniteCallable;
import org.apache.ignite.resources.IgniteInstanceResource;

/** A job that does nothing where a tenant's data lives: measures the colocated round trip. */
public class NoopJob implements IgniteCallable<String> {
    private static final long serialVersionUID = 1L;

    @IgniteInstanceResource
    private transient Ignite ignite;

    @Override public String call() {
        return new Json().put("ok", true)
            .put("node", String.valueOf(ignite.cluster().localNode().consistentId()))
            .raw("result", "{\"noop\":true}").toString();
    }
}
