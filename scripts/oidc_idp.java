// A test OAuth 2.0 token endpoint for the services' OAUTHBEARER/OIDC Kafka listener
// (scripts/services.sh): loopback only, one client with test credentials, never a production
// identity provider. Run as a single-file Java program with Kafka's jars on the class path
// (jose4j signs the tokens, as Kafka's broker validates them):
//
//   java -cp 'kafka/lib/*' scripts/oidc_idp.java HOST PORT DIR CLIENT_ID CLIENT_SECRET
//
// DIR/idp-key.json holds its RSA signing key (made on the first start, kept after), and every
// start writes DIR/jwks.json, the public key set the broker verifies tokens with
// (`sasl.oauthbearer.jwks.endpoint.url=file://...`). POST /token takes the client-credentials
// grant with HTTP Basic client authentication (what librdkafka's `sasl.oauthbearer.method=oidc`
// sends) and answers an RS256 JWT: iss `sessionflow-test-idp`, aud `sessionflow-kafka`, sub the
// client id, valid for an hour.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import org.jose4j.jwk.JsonWebKey;
import org.jose4j.jwk.JsonWebKeySet;
import org.jose4j.jwk.RsaJsonWebKey;
import org.jose4j.jwk.RsaJwkGenerator;
import org.jose4j.jws.AlgorithmIdentifiers;
import org.jose4j.jws.JsonWebSignature;
import org.jose4j.jwt.JwtClaims;

public class OidcIdp {
    static final String ISSUER = "sessionflow-test-idp";
    static final String AUDIENCE = "sessionflow-kafka";
    static final int LIFETIME_S = 3600;

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: oidc_idp.java HOST PORT DIR CLIENT_ID CLIENT_SECRET");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path dir = Path.of(args[2]);
        String clientId = args[3];
        String secret = args[4];
        RsaJsonWebKey key = signingKey(dir.resolve("idp-key.json"));
        writeAtomically(dir.resolve("jwks.json"), new JsonWebKeySet(key).toJson());

        String expected = "Basic " + Base64.getEncoder()
                .encodeToString((clientId + ":" + secret).getBytes(StandardCharsets.UTF_8));
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 16);
        server.createContext("/token", exchange -> {
            try (exchange) {
                if (!"POST".equals(exchange.getRequestMethod())) {
                    reply(exchange, 405, "{\"error\":\"invalid_request\"}");
                    return;
                }
                Map<String, String> form = form(new String(exchange.getRequestBody().readAllBytes(),
                        StandardCharsets.UTF_8));
                String auth = exchange.getRequestHeaders().getFirst("Authorization");
                if (!expected.equals(auth)) {
                    System.err.println("token request refused: wrong client credentials");
                    reply(exchange, 401, "{\"error\":\"invalid_client\"}");
                    return;
                }
                if (!"client_credentials".equals(form.get("grant_type"))) {
                    reply(exchange, 400, "{\"error\":\"unsupported_grant_type\"}");
                    return;
                }
                JwtClaims claims = new JwtClaims();
                claims.setIssuer(ISSUER);
                claims.setAudience(AUDIENCE);
                claims.setSubject(clientId);
                claims.setIssuedAtToNow();
                claims.setExpirationTimeMinutesInTheFuture(LIFETIME_S / 60f);
                claims.setGeneratedJwtId();
                claims.setClaim("scope", form.getOrDefault("scope", "kafka"));
                JsonWebSignature jws = new JsonWebSignature();
                jws.setPayload(claims.toJson());
                jws.setKey(key.getPrivateKey());
                jws.setKeyIdHeaderValue(key.getKeyId());
                jws.setAlgorithmHeaderValue(AlgorithmIdentifiers.RSA_USING_SHA256);
                String token = jws.getCompactSerialization();
                System.err.println("token issued to " + clientId);
                reply(exchange, 200, "{\"access_token\":\"" + token
                        + "\",\"token_type\":\"bearer\",\"expires_in\":" + LIFETIME_S + "}");
            } catch (Exception e) {
                System.err.println("token request failed: " + e);
            }
        });
        server.start();
        System.err.println("token endpoint at http://" + host + ":" + port + "/token");
    }

    /** The signing key kept in `file`, made (and kept there) on the first start. */
    static RsaJsonWebKey signingKey(Path file) throws Exception {
        if (Files.exists(file)) {
            Map<String, Object> params = org.jose4j.json.JsonUtil.parseJson(Files.readString(file));
            return (RsaJsonWebKey) JsonWebKey.Factory.newJwk(params);
        }
        RsaJsonWebKey key = RsaJwkGenerator.generateJwk(2048);
        key.setKeyId("sessionflow-test-" + System.currentTimeMillis());
        key.setAlgorithm(AlgorithmIdentifiers.RSA_USING_SHA256);
        key.setUse("sig");
        writeAtomically(file, key.toJson(JsonWebKey.OutputControlLevel.INCLUDE_PRIVATE));
        return key;
    }

    static void writeAtomically(Path file, String text) throws IOException {
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        Files.writeString(tmp, text);
        Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    static Map<String, String> form(String body) {
        Map<String, String> out = new HashMap<>();
        for (String pair : body.split("&")) {
            int eq = pair.indexOf('=');
            if (eq > 0) {
                out.put(URLDecoder.decode(pair.substring(0, eq), StandardCharsets.UTF_8),
                        URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8));
            }
        }
        return out;
    }

    static void reply(HttpExchange exchange, int status, String json) throws IOException {
        byte[] body = json.getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(status, body.length);
        exchange.getResponseBody().write(body);
    }
}
