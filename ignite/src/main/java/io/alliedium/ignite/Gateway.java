package io.alliedium.ignite;

import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.ignite.Ignite;
import org.apache.ignite.Ignition;
import org.apache.ignite.configuration.IgniteConfiguration;
import org.apache.ignite.spi.communication.tcp.TcpCommunicationSpi;
import org.apache.ignite.spi.discovery.tcp.TcpDiscoverySpi;
import org.apache.ignite.spi.discovery.tcp.ipfinder.vm.TcpDiscoveryVmIpFinder;
import org.apache.ignite.ssl.SslContextFactory;

import py4j.GatewayServer;

/**
 * The py4j gateway: starts an Ignite thick client node with the servers' discovery settings, then serves
 * {@link Facade} to Python on a loopback port. Python starts it (alliedium.thick) and reads the port from
 * the ready file once the client has joined. The JVM exits when its stdin closes (the Python parent died)
 * or on {@link Facade#shutdown()}.
 *
 * Arguments: --name N --host H --discovery host:port,... --communication-port P --work-dir D
 *            --ready-file F --join-timeout-ms T --no-servers-ms T [--keystore P12 --truststore P12] [--auth true]. The py4j auth
 * token comes in the environment variable ALLIEDIUM_GATEWAY_TOKEN, the stores' password (with --keystore: TLS on
 * discovery and communication, as the servers have it) in ALLIEDIUM_IGNITE_STORE_PASSWORD: not on the command
 * line, which other users can read.
 */
public final class Gateway {
    private Gateway() { }

    static Map<String, String> parse(String[] args) {
        Map<String, String> m = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) throw new IllegalArgumentException("expected --option value, got " + args[i]);
            m.put(args[i].substring(2), args[i + 1]);
        }
        return m;
    }

    static IgniteConfiguration clientConfig(Map<String, String> o) {
        String host = o.getOrDefault("host", "127.0.0.1");
        TcpDiscoveryVmIpFinder finder = new TcpDiscoveryVmIpFinder();
        finder.setAddresses(Arrays.asList(o.get("discovery").split(",")));
        TcpDiscoverySpi disco = new TcpDiscoverySpi();
        disco.setIpFinder(finder);
        disco.setLocalAddress(host);
        disco.setJoinTimeout(Long.parseLong(o.getOrDefault("join-timeout-ms", "60000")));
        TcpCommunicationSpi comm = new TcpCommunicationSpi();
        comm.setLocalAddress(host);
        comm.setLocalPort(Integer.parseInt(o.getOrDefault("communication-port", "47100")));
        comm.setLocalPortRange(100);
        IgniteConfiguration cfg = new IgniteConfiguration();
        if (o.containsKey("keystore")) {  // the servers speak TLS on discovery and communication: so does this node
            String pw = System.getenv("ALLIEDIUM_IGNITE_STORE_PASSWORD");
            if (pw == null) throw new IllegalArgumentException("--keystore needs ALLIEDIUM_IGNITE_STORE_PASSWORD");
            SslContextFactory ssl = new SslContextFactory();
            ssl.setKeyStoreFilePath(o.get("keystore"));
            ssl.setKeyStorePassword(pw.toCharArray());
            ssl.setKeyStoreType("PKCS12");
            ssl.setTrustStoreFilePath(o.get("truststore"));
            ssl.setTrustStorePassword(pw.toCharArray());
            ssl.setTrustStoreType("PKCS12");
            cfg.setSslContextFactory(ssl);
        }
        // the servers' authentication: a node joins only with it on too (the built-in authentication logs in
        // thin clients; nodes prove themselves with the TLS certificate the servers trust)
        if ("true".equals(o.get("auth"))) cfg.setAuthenticationEnabled(true);
        return cfg
            .setIgniteInstanceName(o.getOrDefault("name", "alliedium-gateway"))
            .setClientMode(true)
            .setPeerClassLoadingEnabled(false)  // must match the servers; job classes are on their classpath
            .setLocalHost(host)
            .setWorkDirectory(o.get("work-dir"))
            .setMetricsLogFrequency(0)
            .setDiscoverySpi(disco)
            .setCommunicationSpi(comm);
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> o = parse(args);
        Ignite ignite;
        try { ignite = Ignition.start(clientConfig(o)); }
        catch (Throwable e) {
            System.err.println("ALLIEDIUM_GATEWAY_FAILED the Ignite client node did not start: " + e);
            e.printStackTrace();
            System.exit(2);
            return;
        }
        Facade facade = new Facade(ignite, Long.parseLong(o.getOrDefault("no-servers-ms", "30000")));
        GatewayServer server = new GatewayServer.GatewayServerBuilder(facade)
            .javaPort(0).javaAddress(InetAddress.getLoopbackAddress())
            .authToken(System.getenv("ALLIEDIUM_GATEWAY_TOKEN")).build();
        Runnable stop = () -> {
            try { ignite.close(); } catch (Throwable ignored) { }
            try { server.shutdown(); } catch (Throwable ignored) { }
            Runtime.getRuntime().halt(0);
        };
        facade.onShutdown(stop);
        server.start();
        Path ready = Paths.get(o.get("ready-file"));
        Path tmp = ready.resolveSibling(ready.getFileName() + ".tmp");
        Files.write(tmp, String.valueOf(server.getListeningPort()).getBytes(StandardCharsets.UTF_8));
        Files.move(tmp, ready, StandardCopyOption.ATOMIC_MOVE);
        System.out.println("ALLIEDIUM_GATEWAY_READY port " + server.getListeningPort());
        System.out.flush();
        // the parent holds our stdin open; EOF means it is gone (or closed us): stop
        InputStream in = System.in;
        try { while (in.read() >= 0) { } }
        catch (IOException ignored) { }
        stop.run();
    }
}
