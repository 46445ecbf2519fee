package io.alliedium.ignite;

import org.apache.ignite.Ignite;
import org.apache.ignite.IgniteCheckedException;
import org.apache.ignite.internal.IgniteEx;
import org.apache.ignite.lang.IgniteCallable;
import org.apache.ignite.resources.IgniteInstanceResource;

/**
 * Runs on a server node: a checkpoint now (dirty pages written to the page files), returned once it finished.
 * Checks that what lands on disk is encrypted do not have to wait for Ignite's own checkpoint timer.
 */
public class CheckpointJob implements IgniteCallable<String> {
    private static final long serialVersionUID = 1L;

    @IgniteInstanceResource
    private transient Ignite ignite;

    @Override public String call() throws IgniteCheckedException {
        ((IgniteEx) ignite).context().cache().context().database().waitForCheckpoint("alliedium");
        return String.valueOf(ignite.cluster().localNode().consistentId());
    }
}
