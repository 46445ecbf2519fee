package io.alliedium.ignite;

import org.apache.ignite.Ignite;
import org.apache.ignite.lang.IgniteCallable;
import org.apache.ignite.resources.IgniteInstanceResource;

/**
 * Runs on a server node: makes the TDE master key `name` (which every server's keystore must hold) the
 * cluster's master key, re-encrypting the cache groups' keys with it; or, with a null name, only reports the
 * current one. Returns the master key name in use afterwards.
 */
public class MasterKeyJob implements IgniteCallable<String> {
    private static final long serialVersionUID = 1L;

    private final String name;

    @IgniteInstanceResource
    private transient Ignite ignite;

    public MasterKeyJob(String name) { this.name = name; }

    @Override public String call() {
        if (name != null) ignite.encryption().changeMasterKey(name).get();
        return ignite.encryption().getMasterKeyName();
    }
}
