package io.alliedium.ignite;

/** The little JSON this jar writes: objects of strings, numbers, booleans and nested raw JSON. */
final class Json {
    private final StringBuilder sb = new StringBuilder("{");

    static String quote(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    private Json key(String k) {
        if (sb.length() > 1) sb.append(',');
        sb.append(quote(k)).append(':');
        return this;
    }

    Json put(String k, String v) { key(k).sb.append(quote(v)); return this; }
    Json put(String k, long v) { key(k).sb.append(v); return this; }
    Json put(String k, boolean v) { key(k).sb.append(v); return this; }
    /** `raw` must already be JSON. */
    Json raw(String k, String raw) { key(k).sb.append(raw == null ? "null" : raw); return this; }

    @Override public String toString() { return sb.toString() + "}"; }

    /** {"ok": false, "error": {"type": ..., "message": ...}} plus the node when known. */
    static String error(String type, String message, String node) {
        return new Json().put("ok", false).put("node", node)
            .raw("error", new Json().put("type", type).put("message", message).toString()).toString();
    }
}
