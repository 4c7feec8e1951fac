// An OPC UA server for unsflow's tests and benchmarks, built on Eclipse Milo's server SDK
// (org.eclipse.milo:sdk-server from Maven Central). Compiled and started by opcua.sh.
//
//   java OpcuaTestServer PORT DATA_DIR USER PASSWORD BENCH_NODES UPDATE_MS
//
// Endpoint opc.tcp://127.0.0.1:PORT/unsflow, security None and Basic256Sha256
// SignAndEncrypt; anonymous or USER/PASSWORD logins. Every client certificate is accepted
// (a test server). Namespace urn:unsflow:test-server (index 2):
//   Plant/Line1/<Type>   one variable per built-in type, fixed values (see VALUES below)
//   Plant/Line1/Counter  Int64, +1 every UPDATE_MS (a gap shows a lost value)
//   Plant/Line1/Temperature  Double, changes every UPDATE_MS
//   Plant/Line1/Opaque   a server-specific structure no client can decode
//   Bench/V<i>           BENCH_NODES Doubles, all changed every UPDATE_MS
// Counter, Temperature and Bench/V<i> push every change to their monitored items (event
// driven, whatever the sampling interval), so a value missing on the client was lost on the
// way, not skipped by a late sample on a busy machine. Other nodes are sampled (Milo's
// SubscriptionModel). Prints "READY" on stdout once listening.

import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.security.Key;
import java.security.KeyPair;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Date;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.eclipse.milo.opcua.sdk.core.AccessLevel;
import org.eclipse.milo.opcua.sdk.core.Reference;
import org.eclipse.milo.opcua.sdk.server.OpcUaServer;
import org.eclipse.milo.opcua.sdk.server.api.DataItem;
import org.eclipse.milo.opcua.sdk.server.api.ManagedNamespaceWithLifecycle;
import org.eclipse.milo.opcua.sdk.server.api.MonitoredItem;
import org.eclipse.milo.opcua.sdk.server.api.config.OpcUaServerConfig;
import org.eclipse.milo.opcua.sdk.server.identity.UsernameIdentityValidator;
import org.eclipse.milo.opcua.sdk.server.nodes.UaFolderNode;
import org.eclipse.milo.opcua.sdk.server.nodes.UaVariableNode;
import org.eclipse.milo.opcua.sdk.server.util.SubscriptionModel;
import org.eclipse.milo.opcua.stack.core.AttributeId;
import org.eclipse.milo.opcua.stack.core.Identifiers;
import org.eclipse.milo.opcua.stack.core.security.DefaultCertificateManager;
import org.eclipse.milo.opcua.stack.core.security.DefaultTrustListManager;
import org.eclipse.milo.opcua.stack.core.security.SecurityPolicy;
import org.eclipse.milo.opcua.stack.core.transport.TransportProfile;
import org.eclipse.milo.opcua.stack.core.types.builtin.ByteString;
import org.eclipse.milo.opcua.stack.core.types.builtin.DataValue;
import org.eclipse.milo.opcua.stack.core.types.builtin.DateTime;
import org.eclipse.milo.opcua.stack.core.types.builtin.ExtensionObject;
import org.eclipse.milo.opcua.stack.core.types.builtin.LocalizedText;
import org.eclipse.milo.opcua.stack.core.types.builtin.NodeId;
import org.eclipse.milo.opcua.stack.core.types.builtin.QualifiedName;
import org.eclipse.milo.opcua.stack.core.types.builtin.Variant;
import org.eclipse.milo.opcua.stack.core.types.enumerated.MessageSecurityMode;
import org.eclipse.milo.opcua.stack.core.types.structured.BuildInfo;
import org.eclipse.milo.opcua.stack.core.util.SelfSignedCertificateBuilder;
import org.eclipse.milo.opcua.stack.core.util.SelfSignedCertificateGenerator;
import org.eclipse.milo.opcua.stack.server.EndpointConfiguration;
import org.eclipse.milo.opcua.stack.server.security.ServerCertificateValidator;

import static org.eclipse.milo.opcua.sdk.server.api.config.OpcUaServerConfig.USER_TOKEN_POLICY_ANONYMOUS;
import static org.eclipse.milo.opcua.sdk.server.api.config.OpcUaServerConfig.USER_TOKEN_POLICY_USERNAME;
import static org.eclipse.milo.opcua.stack.core.types.builtin.unsigned.Unsigned.ubyte;
import static org.eclipse.milo.opcua.stack.core.types.builtin.unsigned.Unsigned.uint;
import static org.eclipse.milo.opcua.stack.core.types.builtin.unsigned.Unsigned.ulong;
import static org.eclipse.milo.opcua.stack.core.types.builtin.unsigned.Unsigned.ushort;

public class OpcuaTestServer {
    static final String URI = "urn:unsflow:test-server";
    static final String APP_URI = "urn:unsflow:test-server:application";

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        File dir = new File(args[1]);
        String user = args[2];
        String password = args[3];
        int benchNodes = Integer.parseInt(args[4]);
        int updateMs = Integer.parseInt(args[5]);
        dir.mkdirs();

        KeyStore ks = KeyStore.getInstance("PKCS12");
        File ksFile = new File(dir, "server.pfx");
        char[] pw = "unsflow-test".toCharArray();
        if (!ksFile.exists()) {
            ks.load(null, pw);
            KeyPair kp = SelfSignedCertificateGenerator.generateRsaKeyPair(2048);
            X509Certificate cert = new SelfSignedCertificateBuilder(kp)
                .setCommonName("unsflow test server").setOrganization("unsflow")
                .setApplicationUri(APP_URI).addDnsName("localhost").addIpAddress("127.0.0.1")
                .build();
            ks.setKeyEntry("server", kp.getPrivate(), pw, new X509Certificate[]{cert});
            try (FileOutputStream out = new FileOutputStream(ksFile)) {
                ks.store(out, pw);
            }
        } else {
            try (FileInputStream in = new FileInputStream(ksFile)) {
                ks.load(in, pw);
            }
        }
        Key key = ks.getKey("server", pw);
        X509Certificate cert = (X509Certificate) ks.getCertificate("server");
        KeyPair keyPair = new KeyPair(cert.getPublicKey(), (PrivateKey) key);

        File pki = new File(dir, "pki");
        DefaultTrustListManager trust = new DefaultTrustListManager(pki);
        ServerCertificateValidator acceptAll = new ServerCertificateValidator() {
            public void validateCertificateChain(List<X509Certificate> chain) {}
            public void validateCertificateChain(List<X509Certificate> chain, String uri) {}
        };
        UsernameIdentityValidator identity = new UsernameIdentityValidator(true,
            c -> user.equals(c.getUsername()) && password.equals(c.getPassword()));

        Set<EndpointConfiguration> endpoints = new LinkedHashSet<>();
        EndpointConfiguration.Builder base = EndpointConfiguration.newBuilder()
            .setBindAddress("127.0.0.1").setHostname("127.0.0.1").setPath("/unsflow")
            .setBindPort(port).setCertificate(cert)
            .setTransportProfile(TransportProfile.TCP_UASC_UABINARY)
            .addTokenPolicies(USER_TOKEN_POLICY_ANONYMOUS, USER_TOKEN_POLICY_USERNAME);
        endpoints.add(base.copy().setSecurityPolicy(SecurityPolicy.None)
            .setSecurityMode(MessageSecurityMode.None).build());
        endpoints.add(base.copy().setSecurityPolicy(SecurityPolicy.Basic256Sha256)
            .setSecurityMode(MessageSecurityMode.SignAndEncrypt).build());

        OpcUaServerConfig config = OpcUaServerConfig.builder()
            .setApplicationUri(APP_URI)
            .setApplicationName(LocalizedText.english("unsflow OPC UA test server"))
            .setProductUri("urn:unsflow:test-server")
            .setBuildInfo(new BuildInfo("urn:unsflow:test-server", "unsflow", "test server",
                OpcUaServer.SDK_VERSION, "", DateTime.now()))
            .setEndpoints(endpoints)
            .setCertificateManager(new DefaultCertificateManager(keyPair, new X509Certificate[]{cert}))
            .setTrustListManager(trust)
            .setCertificateValidator(acceptAll)
            .setIdentityValidator(identity)
            .build();
        OpcUaServer server = new OpcUaServer(config);
        TestNamespace ns = new TestNamespace(server, benchNodes);
        ns.startup();
        server.startup().get();

        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor();
        ticker.scheduleAtFixedRate(ns::tick, updateMs, updateMs, TimeUnit.MILLISECONDS);
        System.out.println("READY");
        System.out.flush();

        CompletableFuture<Void> done = new CompletableFuture<>();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            ticker.shutdownNow();
            try {
                server.shutdown().get(5, TimeUnit.SECONDS);
            } catch (Exception ignored) {
                // exiting anyway
            }
            done.complete(null);
        }));
        done.get();
    }

    static class TestNamespace extends ManagedNamespaceWithLifecycle {
        final SubscriptionModel subscriptions;
        final int benchNodes;
        final List<UaVariableNode> bench = new ArrayList<>();
        // Changing nodes and the monitored items their changes are pushed to.
        final Map<NodeId, UaVariableNode> dynamic = new ConcurrentHashMap<>();
        final Map<NodeId, List<DataItem>> pushed = new ConcurrentHashMap<>();
        UaVariableNode counter;
        UaVariableNode temperature;
        long tick;

        TestNamespace(OpcUaServer server, int benchNodes) {
            super(server, URI);
            this.benchNodes = benchNodes;
            subscriptions = new SubscriptionModel(server, this);
            getLifecycleManager().addLifecycle(subscriptions);
            getLifecycleManager().addStartupTask(this::build);
        }

        UaFolderNode folder(String path, String name, NodeId parent) {
            UaFolderNode f = new UaFolderNode(getNodeContext(), newNodeId(path),
                newQualifiedName(name), LocalizedText.english(name));
            getNodeManager().addNode(f);
            f.addReference(new Reference(f.getNodeId(), Identifiers.Organizes,
                parent.expanded(), false));
            return f;
        }

        UaVariableNode variable(UaFolderNode parent, String path, String name, NodeId type,
                                Variant value) {
            UaVariableNode n = new UaVariableNode.UaVariableNodeBuilder(getNodeContext())
                .setNodeId(newNodeId(path))
                .setAccessLevel(AccessLevel.READ_WRITE)
                .setUserAccessLevel(AccessLevel.READ_WRITE)
                .setBrowseName(newQualifiedName(name))
                .setDisplayName(LocalizedText.english(name))
                .setDataType(type)
                .setTypeDefinition(Identifiers.BaseDataVariableType)
                .build();
            n.setValue(new DataValue(value));
            getNodeManager().addNode(n);
            parent.addOrganizes(n);
            return n;
        }

        void build() {
            UaFolderNode plant = folder("Plant", "Plant", Identifiers.ObjectsFolder);
            UaFolderNode line = folder("Plant/Line1", "Line1", plant.getNodeId());
            plant.addOrganizes(line);
            Object[][] values = {
                {"Boolean", Identifiers.Boolean, new Variant(true)},
                {"SByte", Identifiers.SByte, new Variant((byte) -128)},
                {"Byte", Identifiers.Byte, new Variant(ubyte(255))},
                {"Int16", Identifiers.Int16, new Variant((short) -32768)},
                {"UInt16", Identifiers.UInt16, new Variant(ushort(65535))},
                {"Int32", Identifiers.Int32, new Variant(-2147483648)},
                {"UInt32", Identifiers.UInt32, new Variant(uint(4294967295L))},
                {"Int64", Identifiers.Int64, new Variant(-9223372036854775808L)},
                {"UInt64", Identifiers.UInt64, new Variant(ulong(new java.math.BigInteger("18446744073709551615")))},
                {"Float", Identifiers.Float, new Variant(1.5f)},
                {"Double", Identifiers.Double, new Variant(3.141592653589793)},
                {"String", Identifiers.String, new Variant("héllo wörld")},
                {"DateTime", Identifiers.DateTime, new Variant(new DateTime(new Date(1704164645678L)))},
                {"Guid", Identifiers.Guid, new Variant(UUID.fromString("0b7c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d"))},
                {"ByteString", Identifiers.ByteString, new Variant(ByteString.of(new byte[]{0, 1, (byte) 255}))},
                {"LocalizedText", Identifiers.LocalizedText, new Variant(LocalizedText.english("running"))},
                {"QualifiedName", Identifiers.QualifiedName, new Variant(new QualifiedName(2, "Press"))},
                {"NodeId", Identifiers.NodeId, new Variant(new NodeId(2, "Plant/Line1"))},
                {"Int32Array", Identifiers.Int32, new Variant(new Integer[]{-1, 0, 7})},
                {"DoubleArray", Identifiers.Double, new Variant(new Double[]{0.5, -2.25})},
                {"StringArray", Identifiers.String, new Variant(new String[]{"a", "", "ünï"})},
            };
            for (Object[] v : values) {
                variable(line, "Plant/Line1/" + v[0], (String) v[0], (NodeId) v[1], (Variant) v[2]);
            }
            counter = variable(line, "Plant/Line1/Counter", "Counter", Identifiers.Int64,
                new Variant(0L));
            temperature = variable(line, "Plant/Line1/Temperature", "Temperature",
                Identifiers.Double, new Variant(20.0));
            NodeId opaqueType = newNodeId("OpaqueStructure");
            variable(line, "Plant/Line1/Opaque", "Opaque", opaqueType, new Variant(
                new ExtensionObject(ByteString.of(new byte[]{1, 2, 3}),
                    newNodeId("OpaqueStructure_Encoding"))));
            UaFolderNode benchFolder = folder("Bench", "Bench", Identifiers.ObjectsFolder);
            for (int i = 0; i < benchNodes; i++) {
                bench.add(variable(benchFolder, "Bench/V" + i, "V" + i, Identifiers.Double,
                    new Variant((double) i)));
            }
            dynamic.put(counter.getNodeId(), counter);
            dynamic.put(temperature.getNodeId(), temperature);
            for (UaVariableNode n : bench) {
                dynamic.put(n.getNodeId(), n);
            }
        }

        void change(UaVariableNode node, Object value) {
            DataValue dv = new DataValue(new Variant(value));
            node.setValue(dv);
            List<DataItem> items = pushed.get(node.getNodeId());
            if (items != null) {
                for (DataItem item : items) {
                    if (item.isSamplingEnabled()) {
                        item.setValue(dv);
                    }
                }
            }
        }

        boolean isPushed(DataItem item) {
            return dynamic.containsKey(item.getReadValueId().getNodeId())
                && AttributeId.Value.uid().equals(item.getReadValueId().getAttributeId());
        }

        void tick() {
            tick++;
            change(counter, tick);
            change(temperature, 20.0 + Math.sin(tick / 10.0));
            for (int i = 0; i < bench.size(); i++) {
                change(bench.get(i), tick + i / 100000.0);
            }
        }

        List<DataItem> sampled(List<DataItem> items) {
            List<DataItem> out = new ArrayList<>();
            for (DataItem item : items) {
                if (!isPushed(item)) {
                    out.add(item);
                }
            }
            return out;
        }

        @Override
        public void onDataItemsCreated(List<DataItem> items) {
            for (DataItem item : items) {
                if (isPushed(item)) {
                    NodeId id = item.getReadValueId().getNodeId();
                    pushed.computeIfAbsent(id, k -> new CopyOnWriteArrayList<>()).add(item);
                    item.setValue(dynamic.get(id).getValue());  // the initial value
                }
            }
            subscriptions.onDataItemsCreated(sampled(items));
        }

        @Override
        public void onDataItemsModified(List<DataItem> items) {
            subscriptions.onDataItemsModified(sampled(items));
        }

        @Override
        public void onDataItemsDeleted(List<DataItem> items) {
            for (DataItem item : items) {
                List<DataItem> list = pushed.get(item.getReadValueId().getNodeId());
                if (list != null) {
                    list.remove(item);
                }
            }
            subscriptions.onDataItemsDeleted(sampled(items));
        }

        @Override
        public void onMonitoringModeChanged(List<MonitoredItem> items) {
            List<MonitoredItem> out = new ArrayList<>();
            for (MonitoredItem item : items) {
                if (!(item instanceof DataItem && isPushed((DataItem) item))) {
                    out.add(item);
                }
            }
            subscriptions.onMonitoringModeChanged(out);
        }
    }
}
