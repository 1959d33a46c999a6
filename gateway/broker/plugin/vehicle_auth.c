/*
 * vehicle_auth.c: vehicle passwords without a broker-wide reload (decision 0055), and
 * the vehicles' rights without Dynamic Security (decision 0060).
 *
 * Why: vehicle passwords lived in Mosquitto's password file, and every provisioning,
 * revocation or new password rewrote it and sent SIGHUP. Mosquitto 2.0.11 then checks the
 * password of EVERY connected client again (src/security_default.c,
 * mosquitto_security_apply_default), in its one thread: 0.4-0.6 s at 2,000 connected
 * units, seconds at 20,000, every unit's PUBACKs waiting meanwhile (decision 0049).
 *
 * What: this plugin answers MOSQ_EVT_BASIC_AUTH for the user names of its own table (a
 * file of "VIN:hash" lines, the hashes of the password file: $7$ PBKDF2-HMAC-SHA512 or the
 * legacy $6$), and defers every other name (MOSQ_ERR_PLUGIN_DEFER) to the password file,
 * which keeps the service accounts and integrations. The gateway replaces the table
 * atomically (a new file renamed over the old one); on MOSQ_EVT_TICK (each pass of the
 * broker's main loop, at least every 100 ms: epoll_wait's timeout in src/mux_epoll.c) the
 * plugin stat()s it at most every check_interval_ms, and when its inode, size, mtime or
 * ctime moved it loads the new table and kicks (mosquitto_kick_client_by_username, without
 * the Will, as a reload's disconnect does) exactly the connected clients whose entry went
 * or changed. Nobody else is touched, and no reload is needed.
 *
 * Rights (decision 0060): it also answers MOSQ_EVT_ACL_CHECK for the user names of its
 * table, in place of a Dynamic Security client and role per vehicle (each Dynamic Security
 * command rewrote that plugin's whole file, so a bulk provisioning cost seconds of stall
 * and then a broker restart). A vehicle may publish exactly v1/vehicles/<VIN>/telemetry,
 * events, status and commands/result, subscribe to and be sent exactly its commands and
 * feedback, and unsubscribe; whole strings compared, so a wildcard, "$share/...", a
 * trailing "/" or another VIN is refused. A VIN that is not in the table is refused
 * everything. "VIN:-" lines are certificate-only vehicles: rights, no password. The client
 * id must equal the VIN (CONNACK "not authorized" otherwise, before the password is
 * looked at), and the ACL check asks it again. Certificate units never reach the password
 * check (src/handle_connect.c skips mosquitto_unpwd_check with use_identity_as_username;
 * the TLS listener's use_username_as_clientid makes their id the certificate's CN), only
 * the ACL check.
 *
 * Order of the checks (Mosquitto asks the plugins in the order of their "plugin" lines,
 * the first answer that is not MOSQ_ERR_PLUGIN_DEFER wins, and for passwords the password
 * file comes after all of them; src/security.c mosquitto_unpwd_check and
 * mosquitto_acl_check): the budget plugin (its ACL callback charges a write and defers),
 * then Dynamic Security (it defers for a user name it holds no client for, which since
 * 0060 is every vehicle), then this one, then the password file. Every other user name
 * this plugin defers.
 *
 * A reload (SIGHUP, still sent for service and integration changes) re-checks every
 * connected client through the same callbacks. So that it stays cheap, an entry remembers
 * an HMAC-SHA256 (under a random key made at start, in memory only) of the last password
 * that passed PBKDF2 for it: the same password again is accepted without PBKDF2. A wrong
 * password always costs the full PBKDF2; a changed entry starts without it.
 *
 * Fail closed: a table that cannot be read, lacks its trailer line ("# end <entries>
 * <token>", so a partial file is recognised) or has another number of entries is an
 * empty table (every vehicle refused, and the connected ones kicked), with an error in the
 * broker's log. A malformed line (not a VIN, not a well-formed hash) is skipped and
 * logged: that name is refused, the others keep working.
 *
 * After every load the plugin writes "<table>.applied" (replaced atomically):
 * "ok <token> <entries> <skipped lines>" or "invalid <reason>", so the gateway knows when
 * its change is in force.
 *
 * Options (plugin_opt_<name> in mosquitto.conf):
 *   table_file          the table's path (required)
 *   check_interval_ms   how often the table is stat()ed at most (default 20)
 *
 * Built by gateway/broker/vehicle_auth.py (cc -shared -fPIC ... -lcrypto) against Debian's
 * mosquitto-dev, libmosquitto-dev and libssl-dev; Mosquitto 2.0 plugin API version 5.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define VIN_LENGTH 17
#define SALT_BYTES 12
#define HASH_BYTES 64
#define MAX_LINE 512
#define CACHE_BYTES 32

struct entry {
	struct entry *next;
	int has_password;            /* 0: "VIN:-", a certificate-only vehicle (rights, no password) */
	int iterations;              /* 0: legacy $6$ (one SHA-512 of password and salt) */
	unsigned char salt[SALT_BYTES];
	unsigned char hash[HASH_BYTES];
	int verified;                /* 1: `accepted` holds the HMAC of a password that passed */
	unsigned char accepted[CACHE_BYTES];
	char vin[VIN_LENGTH + 1];
};

struct table {
	struct entry **slots;
	size_t size;                 /* slots, a power of two */
	size_t entries;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static struct table current;
static char table_path[PATH_MAX];
static char applied_path[PATH_MAX];
static long check_interval_ms = 20;
static double checked_at = 0;
static struct stat loaded_stat;
static int loaded_exists = 0;
static unsigned char cache_key[32];

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int is_vin(const char *name, size_t length)
{
	size_t i;
	if(name == NULL || length != VIN_LENGTH){
		return 0;
	}
	for(i = 0; i < VIN_LENGTH; i++){
		char c = name[i];
		if(c >= '0' && c <= '9') continue;
		if(c >= 'A' && c <= 'Z' && c != 'I' && c != 'O' && c != 'Q') continue;
		return 0;
	}
	return 1;
}

static uint64_t hash_vin(const char *vin)
{
	uint64_t h = 1469598103934665603ULL;
	size_t i;
	for(i = 0; i < VIN_LENGTH; i++){
		h ^= (unsigned char)vin[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static int b64_value(char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '+') return 62;
	if(c == '/') return 63;
	return -1;
}

/* Strict standard base64 with padding into exactly `want` bytes; -1 otherwise. */
static int b64_decode_exact(const char *text, size_t length, unsigned char *out, size_t want)
{
	size_t i, n = 0;
	uint32_t acc = 0;
	int bits = 0, pad = 0;
	if(length == 0 || length % 4 != 0){
		return -1;
	}
	for(i = 0; i < length; i++){
		int v;
		if(text[i] == '='){
			if(i < length - 2) return -1;
			pad++;
			continue;
		}
		if(pad) return -1;
		v = b64_value(text[i]);
		if(v < 0) return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if(bits >= 8){
			bits -= 8;
			if(n >= want) return -1;
			out[n++] = (unsigned char)((acc >> bits) & 0xFF);
		}
	}
	return n == want ? 0 : -1;
}

/* "$7$<iterations>$<salt>$<hash>" or "$6$<salt>$<hash>" into `e`; -1 if malformed. */
static int parse_hash(const char *text, struct entry *e)
{
	const char *salt, *hash, *end;
	if(!strncmp(text, "$7$", 3)){
		char *stop = NULL;
		long iterations;
		if(text[3] < '1' || text[3] > '9') return -1;
		errno = 0;
		iterations = strtol(text + 3, &stop, 10);
		if(errno || stop == NULL || *stop != '$' || iterations < 1 || iterations > 999999999){
			return -1;
		}
		e->iterations = (int)iterations;
		salt = stop + 1;
	}else if(!strncmp(text, "$6$", 3)){
		e->iterations = 0;
		salt = text + 3;
	}else{
		return -1;
	}
	hash = strchr(salt, '$');
	if(hash == NULL) return -1;
	end = hash + 1 + strlen(hash + 1);
	if(b64_decode_exact(salt, (size_t)(hash - salt), e->salt, SALT_BYTES)) return -1;
	if(b64_decode_exact(hash + 1, (size_t)(end - hash - 1), e->hash, HASH_BYTES)) return -1;
	return 0;
}

static void table_free(struct table *t)
{
	size_t i;
	for(i = 0; i < t->size; i++){
		struct entry *e = t->slots[i];
		while(e){
			struct entry *next = e->next;
			OPENSSL_cleanse(e, sizeof(*e));
			free(e);
			e = next;
		}
	}
	free(t->slots);
	memset(t, 0, sizeof(*t));
}

static struct entry *table_find(const struct table *t, const char *vin)
{
	struct entry *e;
	if(t->size == 0) return NULL;
	for(e = t->slots[hash_vin(vin) & (t->size - 1)]; e; e = e->next){
		if(!memcmp(e->vin, vin, VIN_LENGTH + 1)) return e;
	}
	return NULL;
}

static int table_grow(struct table *t)
{
	size_t size = t->size ? t->size * 2 : 1024;
	struct entry **slots = calloc(size, sizeof(*slots));
	size_t i;
	if(slots == NULL) return -1;
	for(i = 0; i < t->size; i++){
		struct entry *e = t->slots[i];
		while(e){
			struct entry *next = e->next;
			size_t slot = hash_vin(e->vin) & (size - 1);
			e->next = slots[slot];
			slots[slot] = e;
			e = next;
		}
	}
	free(t->slots);
	t->slots = slots;
	t->size = size;
	return 0;
}

/* Adds `e` (taking it), replacing an entry of the same VIN (the last line wins). */
static int table_add(struct table *t, struct entry *e)
{
	size_t slot;
	struct entry **link;
	if((t->size == 0 || t->entries >= t->size) && table_grow(t)){
		return -1;
	}
	slot = hash_vin(e->vin) & (t->size - 1);
	for(link = &t->slots[slot]; *link; link = &(*link)->next){
		if(!memcmp((*link)->vin, e->vin, VIN_LENGTH + 1)){
			struct entry *old = *link;
			e->next = old->next;
			*link = e;
			OPENSSL_cleanse(old, sizeof(*old));
			free(old);
			return 0;
		}
	}
	e->next = t->slots[slot];
	t->slots[slot] = e;
	t->entries++;
	return 0;
}

static void write_applied(const char *text)
{
	char tmp[PATH_MAX + 8];
	FILE *f;
	if(snprintf(tmp, sizeof(tmp), "%s.tmp", applied_path) >= (int)sizeof(tmp)) return;
	f = fopen(tmp, "w");
	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "vehicle_auth: cannot write %s: %s", tmp,
				strerror(errno));
		return;
	}
	fputs(text, f);
	if(fclose(f) == 0){
		rename(tmp, applied_path);
	}else{
		unlink(tmp);
	}
}

/* Reads the table file into `t`. 0 and the trailer's token on success; -1 with `reason`
 * set when the file as a whole is unusable (then `t` is empty). */
static int table_load(struct table *t, char *token, size_t token_size, size_t *skipped,
		char *reason, size_t reason_size)
{
	FILE *f;
	char line[MAX_LINE + 2];
	unsigned long lineno = 0;
	int ended = 0;
	unsigned long declared = 0;

	memset(t, 0, sizeof(*t));
	*skipped = 0;
	f = fopen(table_path, "r");
	if(f == NULL){
		snprintf(reason, reason_size, "cannot open %s: %s", table_path, strerror(errno));
		return -1;
	}
	while(fgets(line, sizeof(line), f)){
		size_t length = strlen(line);
		char *colon;
		struct entry *e;
		lineno++;
		if(ended){
			snprintf(reason, reason_size, "line %lu after the end line", lineno);
			goto invalid;
		}
		if(length == 0 || line[length - 1] != '\n'){
			snprintf(reason, reason_size, "line %lu is too long or not terminated", lineno);
			goto invalid;
		}
		line[--length] = '\0';
		if(line[0] == '#'){
			char tok[65];
			int used = 0;
			if(sscanf(line, "# end %lu %64s%n", &declared, tok, &used) == 2){
				/* %64s stops at 64 characters: a longer token must be refused, not cut
				 * (the answer would then name a token the gateway never wrote) */
				if(line[used] != '\0' || strlen(tok) + 1 > token_size){
					snprintf(reason, reason_size, "the end line's token is too long");
					goto invalid;
				}
				strcpy(token, tok);
				ended = 1;
			}
			continue;
		}
		if(length == 0) continue;
		colon = strchr(line, ':');
		e = calloc(1, sizeof(*e));
		if(e == NULL){
			snprintf(reason, reason_size, "out of memory");
			goto invalid;
		}
		if(colon != NULL && !strcmp(colon + 1, "-")){
			e->has_password = 0;
		}else if(colon != NULL && !parse_hash(colon + 1, e)){
			e->has_password = 1;
		}else{
			colon = NULL;
		}
		if(colon == NULL || !is_vin(line, (size_t)(colon - line))){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"vehicle_auth: %s line %lu is not \"VIN:hash\" with a well-formed $7$ or "
					"$6$ hash, nor \"VIN:-\"; skipped (that name is refused)", table_path, lineno);
			OPENSSL_cleanse(e, sizeof(*e));
			free(e);
			(*skipped)++;
			continue;
		}
		memcpy(e->vin, line, VIN_LENGTH);
		e->vin[VIN_LENGTH] = '\0';
		if(table_add(t, e)){
			OPENSSL_cleanse(e, sizeof(*e));
			free(e);
			snprintf(reason, reason_size, "out of memory");
			goto invalid;
		}
	}
	if(ferror(f)){
		snprintf(reason, reason_size, "read error: %s", strerror(errno));
		goto invalid;
	}
	fclose(f);
	if(!ended){
		snprintf(reason, reason_size, "no \"# end <entries> <token>\" line (a partial file?)");
		table_free(t);
		return -1;
	}
	if(declared != t->entries + *skipped){
		snprintf(reason, reason_size, "the end line counts %lu entries, the file has %lu",
				declared, (unsigned long)(t->entries + *skipped));
		table_free(t);
		return -1;
	}
	return 0;
invalid:
	fclose(f);
	table_free(t);
	return -1;
}

static int same_entry(const struct entry *a, const struct entry *b)
{
	return a->has_password == b->has_password && a->iterations == b->iterations
		&& !memcmp(a->salt, b->salt, SALT_BYTES) && !memcmp(a->hash, b->hash, HASH_BYTES);
}

/* Kicks the connected clients of every entry of `old` that `new` lacks or changed. */
static size_t kick_changed(const struct table *old, const struct table *new)
{
	size_t i, kicked = 0;
	for(i = 0; i < old->size; i++){
		const struct entry *e;
		for(e = old->slots[i]; e; e = e->next){
			const struct entry *n = table_find(new, e->vin);
			if(n == NULL || !same_entry(n, e)){
				mosquitto_kick_client_by_username(e->vin, false);
				kicked++;
			}
		}
	}
	return kicked;
}

/* Carries the verified-password cache over for entries that did not change. */
static void keep_verified(const struct table *old, struct table *new)
{
	size_t i;
	for(i = 0; i < new->size; i++){
		struct entry *n;
		for(n = new->slots[i]; n; n = n->next){
			const struct entry *e = table_find(old, n->vin);
			if(e && e->verified && same_entry(n, e)){
				n->verified = 1;
				memcpy(n->accepted, e->accepted, CACHE_BYTES);
			}
		}
	}
}

static void reload_table(void)
{
	struct table fresh;
	char token[65] = "";
	char reason[PATH_MAX + 128] = "";
	char applied[sizeof(reason) + 96];
	size_t skipped = 0, kicked;
	double started = now_s();

	if(table_load(&fresh, token, sizeof(token), &skipped, reason, sizeof(reason))){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"vehicle_auth: the vehicle table %s is unusable (%s): every vehicle is refused "
				"until a valid one replaces it", table_path, reason);
		memset(&fresh, 0, sizeof(fresh));
		snprintf(applied, sizeof(applied), "invalid %s\n", reason);
	}else{
		snprintf(applied, sizeof(applied), "ok %s %lu %lu\n", token,
				(unsigned long)fresh.entries, (unsigned long)skipped);
	}
	keep_verified(&current, &fresh);
	/* the new table first: a client kicked now and reconnecting at once meets it */
	{
		struct table old = current;
		current = fresh;
		kicked = kick_changed(&old, &current);
		table_free(&old);
	}
	write_applied(applied);
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"vehicle_auth: loaded %lu vehicles from %s (%lu lines skipped), %lu kicked, "
			"in %.1f ms", (unsigned long)current.entries, table_path, (unsigned long)skipped,
			(unsigned long)kicked, (now_s() - started) * 1e3);
}

static int stat_changed(struct stat *st, int *exists)
{
	*exists = stat(table_path, st) == 0;
	if(*exists != loaded_exists) return 1;
	if(!*exists) return 0;
	return st->st_ino != loaded_stat.st_ino || st->st_dev != loaded_stat.st_dev
		|| st->st_size != loaded_stat.st_size
		|| st->st_mtim.tv_sec != loaded_stat.st_mtim.tv_sec
		|| st->st_mtim.tv_nsec != loaded_stat.st_mtim.tv_nsec
		|| st->st_ctim.tv_sec != loaded_stat.st_ctim.tv_sec
		|| st->st_ctim.tv_nsec != loaded_stat.st_ctim.tv_nsec;
}

static void check_table(int force)
{
	struct stat st;
	int exists;
	if(stat_changed(&st, &exists) || force){
		loaded_exists = exists;
		if(exists) loaded_stat = st;
		reload_table();
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	double now = now_s();
	(void)event;
	(void)event_data;
	(void)userdata;
	if((now - checked_at) * 1000.0 >= (double)check_interval_ms){
		checked_at = now;
		check_table(0);
	}
	return MOSQ_ERR_SUCCESS;
}

static void cache_mac(const char *password, unsigned char *out)
{
	unsigned int length = CACHE_BYTES;
	HMAC(EVP_sha256(), cache_key, sizeof(cache_key), (const unsigned char *)password,
			strlen(password), out, &length);
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *clientid;
	struct entry *e;
	unsigned char computed[HASH_BYTES];
	unsigned char mac[CACHE_BYTES];
	(void)event;
	(void)userdata;

	if(ed->username == NULL || !is_vin(ed->username, strlen(ed->username))){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	e = table_find(&current, ed->username);
	if(e == NULL){
		return MOSQ_ERR_PLUGIN_DEFER; /* the password file's (where vehicles no longer are) */
	}
	/* the client id is bound to the VIN (what the Dynamic Security client's "clientid"
	 * did, decision 0008): checked before the password, so another id never gets as far
	 * as taking over the VIN's session or firing its Will; CONNACK "not authorized" */
	clientid = mosquitto_client_id(ed->client);
	if(clientid == NULL || strcmp(clientid, e->vin)){
		return MOSQ_ERR_AUTH;
	}
	if(ed->password == NULL || !e->has_password){
		return MOSQ_ERR_AUTH;
	}
	cache_mac(ed->password, mac);
	if(e->verified && CRYPTO_memcmp(mac, e->accepted, CACHE_BYTES) == 0){
		return MOSQ_ERR_SUCCESS;
	}
	if(e->iterations > 0){
		if(!PKCS5_PBKDF2_HMAC(ed->password, (int)strlen(ed->password), e->salt, SALT_BYTES,
				e->iterations, EVP_sha512(), HASH_BYTES, computed)){
			return MOSQ_ERR_AUTH;
		}
	}else{
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		unsigned int length = HASH_BYTES;
		if(ctx == NULL
				|| !EVP_DigestInit_ex(ctx, EVP_sha512(), NULL)
				|| !EVP_DigestUpdate(ctx, ed->password, strlen(ed->password))
				|| !EVP_DigestUpdate(ctx, e->salt, SALT_BYTES)
				|| !EVP_DigestFinal_ex(ctx, computed, &length)){
			EVP_MD_CTX_free(ctx);
			return MOSQ_ERR_AUTH;
		}
		EVP_MD_CTX_free(ctx);
	}
	if(CRYPTO_memcmp(computed, e->hash, HASH_BYTES) != 0){
		return MOSQ_ERR_AUTH;
	}
	memcpy(e->accepted, mac, CACHE_BYTES);
	e->verified = 1;
	return MOSQ_ERR_SUCCESS;
}

/* "v1/vehicles/<vin>/<one of suffixes>", compared as whole strings: a wildcard, a
 * "$share/..." filter, a trailing "/" or another VIN is another string and matches none. */
static int own_topic(const char *topic, const char *vin, const char *const *suffixes)
{
	static const char prefix[] = "v1/vehicles/";
	const size_t p = sizeof(prefix) - 1;
	size_t i;
	if(topic == NULL || strncmp(topic, prefix, p) || strncmp(topic + p, vin, VIN_LENGTH)
			|| topic[p + VIN_LENGTH] != '/'){
		return 0;
	}
	for(i = 0; suffixes[i]; i++){
		if(!strcmp(topic + p + VIN_LENGTH + 1, suffixes[i])) return 1;
	}
	return 0;
}

/* What a vehicle may do (gateway.broker.auth.vehicle_acls): publish its own telemetry,
 * events, status and commands/result; subscribe to, and be sent, its own commands and
 * feedback, spelled exactly; unsubscribe. Nothing else. */
static const char *const vehicle_write[] = {"telemetry", "events", "status", "commands/result", NULL};
static const char *const vehicle_read[] = {"commands", "feedback", NULL};

/* The rights of the vehicles of the table, in place of a Dynamic Security client and role
 * per vehicle (decision 0060). Asked after the budget plugin (which charges a write and
 * defers) and Dynamic Security (which defers for a user name it has no client for):
 * Mosquitto takes the first answer that is not DEFER (src/security.c,
 * mosquitto_acl_check). Other user names defer, as before; a VIN that is not in the table
 * (revoked, or the table unusable) is refused. */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username, *clientid;
	struct entry *e;
	(void)event;
	(void)userdata;

	username = mosquitto_client_username(ed->client);
	if(username == NULL || !is_vin(username, strlen(username))){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	e = table_find(&current, username);
	if(e == NULL){
		return MOSQ_ERR_ACL_DENIED;
	}
	/* bound at CONNECT (password units here, certificate units by the TLS listener's
	 * use_username_as_clientid); checked again so no other path gets a vehicle's rights */
	clientid = mosquitto_client_id(ed->client);
	if(clientid == NULL || strcmp(clientid, e->vin)){
		return MOSQ_ERR_ACL_DENIED;
	}
	switch(ed->access){
		case MOSQ_ACL_WRITE:
			return own_topic(ed->topic, e->vin, vehicle_write) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
		case MOSQ_ACL_SUBSCRIBE:
			return own_topic(ed->topic, e->vin, vehicle_read) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;
	const char *path = NULL;
	(void)userdata;

	memset(&current, 0, sizeof(current));
	for(i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "table_file")){
			path = options[i].value;
		}else if(!strcmp(options[i].key, "check_interval_ms")){
			char *end = NULL;
			long value = strtol(options[i].value, &end, 10);
			if(end == options[i].value || *end != '\0' || value < 1 || value > 60000){
				mosquitto_log_printf(MOSQ_LOG_ERR,
						"vehicle_auth: plugin_opt_check_interval_ms must be 1..60000, got '%s'",
						options[i].value);
				return MOSQ_ERR_INVAL;
			}
			check_interval_ms = value;
		}
	}
	if(path == NULL || path[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "vehicle_auth: plugin_opt_table_file is missing");
		return MOSQ_ERR_INVAL;
	}
	if(snprintf(table_path, sizeof(table_path), "%s", path) >= (int)sizeof(table_path)
			|| snprintf(applied_path, sizeof(applied_path), "%s.applied", path)
				>= (int)sizeof(applied_path)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "vehicle_auth: plugin_opt_table_file is too long");
		return MOSQ_ERR_INVAL;
	}
	if(RAND_bytes(cache_key, sizeof(cache_key)) != 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, "vehicle_auth: no random bytes for the cache key");
		return MOSQ_ERR_UNKNOWN;
	}
	plugin_id = identifier;
	loaded_exists = 0;
	check_table(1);
	checked_at = now_s();
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc) return rc;
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(plugin_id){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	}
	table_free(&current);
	OPENSSL_cleanse(cache_key, sizeof(cache_key));
	return MOSQ_ERR_SUCCESS;
}
