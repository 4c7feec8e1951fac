// Readiness probe of scripts/services.d/mm2.sh (and debezium.sh): compiled once into
// the MirrorMaker cache dir and run with its jars.
//
//   java -cp 'LIBS/*:DIR' MirrorProbe TIMEOUT_MS BOOTSTRAP CA_FILE USER PASSWORD TOPIC SINCE_MS
//
// Waits (up to TIMEOUT_MS) until TOPIC on the cluster at BOOTSTRAP (SASL_SSL,
// SCRAM-SHA-512, server verified against CA_FILE) holds a record stamped at or
// after SINCE_MS (epoch ms): for MirrorMaker 2, a heartbeat it wrote to the target
// cluster after it started, proof that its connectors run and reach that cluster.
// Exit 0: found; 1: not within the time; 2: the login or TLS handshake failed.

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TimeoutException;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class MirrorProbe {
    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: MirrorProbe TIMEOUT_MS BOOTSTRAP CA_FILE USER PASSWORD TOPIC SINCE_MS");
            System.exit(64);
        }
        long deadline = System.currentTimeMillis() + Long.parseLong(args[0]);
        String topic = args[5];
        long since = Long.parseLong(args[6]);
        Properties p = new Properties();
        p.put("bootstrap.servers", args[1]);
        p.put("security.protocol", "SASL_SSL");
        p.put("sasl.mechanism", "SCRAM-SHA-512");
        p.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required"
                + " username=\"" + args[3].replace("\"", "\\\"") + "\""
                + " password=\"" + args[4].replace("\"", "\\\"") + "\";");
        p.put("ssl.truststore.type", "PEM");
        p.put("ssl.truststore.location", args[2]);
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        String last = "no partitions of " + topic + " yet";
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
            List<TopicPartition> assigned = new ArrayList<>();
            while (System.currentTimeMillis() < deadline) {
                if (assigned.isEmpty()) {
                    Map<String, List<PartitionInfo>> topics;
                    try {
                        topics = consumer.listTopics(Duration.ofSeconds(5));
                    } catch (TimeoutException e) {
                        // A busy machine (JVMs starting beside parallel tests): ask again
                        // until the deadline, as for a topic that does not exist yet.
                        last = "no answer to a metadata request within 5 s: " + e.getMessage();
                        continue;
                    }
                    List<PartitionInfo> parts = topics.get(topic);
                    if (parts == null) {
                        Thread.sleep(500);
                        continue;
                    }
                    for (PartitionInfo info : parts) {
                        assigned.add(new TopicPartition(topic, info.partition()));
                    }
                    consumer.assign(assigned);
                    consumer.seekToBeginning(assigned);
                }
                for (ConsumerRecord<byte[], byte[]> rec : consumer.poll(Duration.ofMillis(500))) {
                    if (rec.timestamp() >= since) {
                        return;
                    }
                    last = "only records older than the start in " + topic;
                }
            }
        } catch (AuthenticationException e) {
            System.err.println(args[1] + " refused the TLS handshake or login of " + args[3] + ": " + e);
            System.exit(2);
        }
        System.err.println(last);
        System.exit(1);
    }
}
