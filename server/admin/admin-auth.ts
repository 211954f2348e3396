/**
 * Authentication and audit of the admin API: every call must carry `authorization: Bearer <admin token>`,
 * compared in constant time (as SHA-256 digests, so that lengths leak nothing either); a missing or wrong
 * token is UNAUTHENTICATED, and a tenant's API key (valid for inference, not here) is PERMISSION_DENIED. Every call is logged with its procedure, the caller's address and its outcome.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "../../common/log/logger.js";
import type { KeyStore } from "../tenants/key-store.js";

const digest = (s: string) => createHash("sha256").update(s).digest();

/** The admin token from config: inline (local use) or a file (a mounted Secret; trailing newline trimmed). */
export function readAdminToken(admin: {
  token?: string | undefined;
  tokenFile?: string | undefined;
}): string | undefined {
  if (admin.tokenFile !== undefined) {
    const token = readFileSync(admin.tokenFile, "utf8").trim();
    if (token.length < 16)
      throw new Error(`${admin.tokenFile}: the admin token must have at least 16 characters`);
    return token;
  }
  return admin.token;
}

/** `token` is read on every call, so that a rotated token takes effect at once. */
export function adminAuthInterceptor(token: () => string, log: Logger, keys?: KeyStore): Interceptor {
  let current = "";
  let expected = digest("");
  return (next) => async (req) => {
    const t = token();
    if (t !== current) {
      current = t;
      expected = digest(t);
    }
    const header = req.header.get("authorization") ?? "";
    const presented = header.startsWith("Bearer ") ? header.slice("Bearer ".length) : "";
    const procedure = `${req.service.typeName}/${req.method.name}`;
    if (presented !== "" && keys?.authenticate(presented) !== undefined) {
      log.warn({ audit: true, procedure, code: "permission_denied" }, "admin call with a tenant key refused");
      throw new ConnectError("a tenant API key cannot call the admin API", Code.PermissionDenied);
    }
    if (presented === "" || current === "" || !timingSafeEqual(digest(presented), expected)) {
      log.warn({ audit: true, procedure, code: "unauthenticated" }, "admin call refused");
      throw new ConnectError("a valid admin token is required", Code.Unauthenticated);
    }
    try {
      const res = await next(req);
      log.info({ audit: true, procedure, code: "ok" }, "admin call");
      return res;
    } catch (err) {
      log.info({ audit: true, procedure, code: Code[ConnectError.from(err).code] }, "admin call failed");
      throw err;
    }
  };
}
