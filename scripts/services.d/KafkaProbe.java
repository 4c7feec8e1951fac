// Readiness probe for the test Kafka of scripts/services.d/kafka.sh: compiled
// once into the Kafka cache dir and run with the broker's own jars.
//
//   java -cp 'LIBS/*:DIR' KafkaProbe TIMEOUT_MS PLAIN_BOOTSTRAP SASL_BOOTSTRAP CA_FILE USER PASSWORD
//
// Waits (up to TIMEOUT_MS) until the PLAINTEXT listener answers a metadata
// request, then proves the SASL_SSL listener with one real round trip: TLS
// verified against CA_FILE (PEM) with host name checks, and a SCRAM-SHA-512
// login. Exit 0: both work; 1: the plain listener did not answer in time;
// 2: the SASL_SSL listener refused the TLS handshake or the login.

import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.errors.AuthenticationException;

public final class KafkaProbe {
    private static Properties base(String bootstrap, long timeoutMs) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, Long.toString(Math.max(timeoutMs, 3000)));
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        return p;
    }

    private static void listTopics(Properties p, long timeoutMs) throws Exception {
        try (Admin admin = Admin.create(p)) {
            admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 6) {
            System.err.println("usage: KafkaProbe TIMEOUT_MS PLAIN SASL CA_FILE USER PASSWORD");
            System.exit(64);
        }
        long deadline = System.currentTimeMillis() + Long.parseLong(args[0]);
        String last = "";
        boolean plainUp = false;
        while (System.currentTimeMillis() < deadline) {
            long left = deadline - System.currentTimeMillis();
            try {
                listTopics(base(args[1], left), left);
                plainUp = true;
                break;
            } catch (Exception e) {
                last = String.valueOf(e.getCause() != null ? e.getCause() : e);
                Thread.sleep(200);
            }
        }
        if (!plainUp) {
            System.err.println("plain listener " + args[1] + " did not answer: " + last);
            System.exit(1);
        }
        Properties p = base(args[2], 10000);
        p.put("security.protocol", "SASL_SSL");
        p.put("sasl.mechanism", "SCRAM-SHA-512");
        p.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required"
                + " username=\"" + args[4].replace("\"", "\\\"") + "\""
                + " password=\"" + args[5].replace("\"", "\\\"") + "\";");
        p.put("ssl.truststore.type", "PEM");
        p.put("ssl.truststore.location", args[3]);
        try {
            listTopics(p, 10000);
        } catch (Exception e) {
            Throwable c = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
            String kind = c instanceof AuthenticationException ? "refused the TLS handshake or login"
                    : "failed";
            System.err.println("SASL_SSL listener " + args[2] + " " + kind + " for user " + args[4]
                    + ": " + c);
            System.exit(2);
        }
    }
}
