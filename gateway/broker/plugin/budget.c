/*
 * budget.c: a per-vehicle message budget for Mosquitto 2.0 (decision 0048).
 *
 * Why: one vehicle credential flooding its own telemetry topic fills the gateway's
 * shared-subscription queue in the broker (max_queued_bytes), and Mosquitto 2.0.11 then
 * acknowledges (PUBACK 0x00) and drops every vehicle's QoS 1 messages alike (security
 * review 6, decision 0043). This plugin keeps two token buckets per vehicle (messages
 * and payload bytes, both refilled continuously) and refuses a message over either of
 * them *before* the broker stores or acknowledges it.
 *
 * How a message is refused: the write ACL check callback (on_acl_check below, decision
 * 0059; it was the MOSQ_EVT_MESSAGE callback, which a Last Will bypassed) returns
 * MOSQ_ERR_ADMINISTRATIVE_ACTION. In Mosquitto 2.0.11's handle__publish
 * (src/handle_publish.c) a result other than
 * MOSQ_ERR_SUCCESS and MOSQ_ERR_ACL_DENIED frees the message and returns that code; the
 * read loop (src/mux_epoll.c, src/mux_poll.c) then calls do_disconnect(), which closes
 * the socket without a PUBACK (logged as "Client X been disconnected by administrative
 * action."). Not MOSQ_ERR_ACL_DENIED: that answers PUBACK 0x87, which the device contract
 * tells a unit to drop (section 8.1). A unit resends an unacknowledged message after its
 * reconnect backoff, so an honest unit over budget loses nothing; a flooder gets no more
 * than its budget through.
 *
 * Who is limited: clients whose user name is a VIN (17 of [A-HJ-NPR-Z0-9], the syntax of
 * schemas/vin.py), i.e. vehicles, on a password or a certificate (use_identity_as_username)
 * listener. Never the service accounts (telematics-gateway, the API's, $CONTROL's, an edge
 * bridge's telematics-edge-N), integrations, nor anonymous clients (a development broker):
 * none of their names has the VIN syntax.
 *
 * The buckets outlive a connection (keyed by user name, not by connection), so a flooder
 * that reconnects does not start with a fresh burst. Memory: one small entry per vehicle
 * that ever published since the broker started.
 *
 * Options (plugin_opt_<name> in mosquitto.conf), all positive integers:
 *   messages_per_s   tokens of the message bucket refilled per second
 *   burst_messages   size of the message bucket (what a full bucket lets through at once)
 *   bytes_per_s      payload bytes refilled per second
 *   burst_bytes      size of the byte bucket; a message bigger than this is always refused
 *
 * Built by gateway/broker/budget.py (cc -shared -fPIC) against Debian's mosquitto-dev
 * and libmosquitto-dev headers; Mosquitto 2.0 plugin API version 5.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define VIN_LENGTH 17
/* a vehicle's refusals are logged at most once in this many seconds (its count in the line) */
#define LOG_INTERVAL_S 1.0

struct bucket {
	struct bucket *next;
	double messages;      /* tokens left in the message bucket */
	double bytes;         /* tokens left in the byte bucket */
	double refilled_at;   /* monotonic seconds of the last refill */
	unsigned long refused; /* messages refused since the broker started */
	unsigned long unlogged; /* refusals since the last one logged */
	double logged_at;     /* monotonic seconds of the last refusal logged */
	char vin[VIN_LENGTH + 1];
};

struct budget {
	double messages_per_s;
	double burst_messages;
	double bytes_per_s;
	double burst_bytes;
	struct bucket **table;
	size_t buckets;       /* slots in table, a power of two */
	size_t entries;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static struct budget config;

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

static int is_vin(const char *name)
{
	size_t i;
	if(name == NULL || strlen(name) != VIN_LENGTH){
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
	/* FNV-1a: the names are VINs, not chosen to collide (a vehicle only ever has its own) */
	uint64_t h = 1469598103934665603ULL;
	size_t i;
	for(i = 0; i < VIN_LENGTH; i++){
		h ^= (unsigned char)vin[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static int grow(void)
{
	size_t size = config.buckets ? config.buckets * 2 : 1024;
	struct bucket **table = calloc(size, sizeof(*table));
	size_t i;
	if(table == NULL){
		return -1;
	}
	for(i = 0; i < config.buckets; i++){
		struct bucket *b = config.table[i];
		while(b){
			struct bucket *next = b->next;
			size_t slot = hash_vin(b->vin) & (size - 1);
			b->next = table[slot];
			table[slot] = b;
			b = next;
		}
	}
	free(config.table);
	config.table = table;
	config.buckets = size;
	return 0;
}

static struct bucket *find_or_add(const char *vin, double now)
{
	size_t slot;
	struct bucket *b;
	if(config.buckets == 0 && grow()){
		return NULL;
	}
	slot = hash_vin(vin) & (config.buckets - 1);
	for(b = config.table[slot]; b; b = b->next){
		if(memcmp(b->vin, vin, VIN_LENGTH) == 0){
			return b;
		}
	}
	if(config.entries >= config.buckets && grow() == 0){
		slot = hash_vin(vin) & (config.buckets - 1);
	}
	b = calloc(1, sizeof(*b));
	if(b == NULL){
		return NULL;
	}
	memcpy(b->vin, vin, VIN_LENGTH);
	b->messages = config.burst_messages;
	b->bytes = config.burst_bytes;
	b->refilled_at = now;
	b->next = config.table[slot];
	config.table[slot] = b;
	config.entries++;
	return b;
}

/*
 * Every message a vehicle's connection puts into the broker passes one write ACL check
 * (Mosquitto 2.0.11): a PUBLISH in handle__publish (src/handle_publish.c:245, before the
 * MOSQ_EVT_MESSAGE event), and a Last Will in context__send_will (src/context.c:184),
 * whichever way it fires (a dropped socket, a take-over by the same client id,
 * src/handle_connect.c:185, or after its will delay, src/will_delay.c). The Will never
 * reaches MOSQ_EVT_MESSAGE, so a budget counted there let a credential that sets a Will,
 * connects and drops the socket in a loop put ~20 MB/s through (decision 0059). So the
 * budget is charged here, once per message, Will or publish. This callback must be asked
 * before the Dynamic Security plugin's (the first answer other than DEFER wins,
 * src/security.c mosquitto_acl_check), so gateway/broker/mosquitto.py loads this plugin
 * first; under budget it answers DEFER and Dynamic Security decides as before.
 *
 * Over budget it answers MOSQ_ERR_ADMINISTRATIVE_ACTION: handle__publish then frees the
 * message and the read loop closes the connection without a PUBACK (as before, see the
 * head of this file); context__send_will queues a Will only on MOSQ_ERR_SUCCESS, so an
 * over-budget Will is dropped. A retained message's source check (check_retain_source,
 * src/retain.c) asks with a stack context that has no address: not charged.
 */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *name;
	struct bucket *b;
	double now, elapsed, size;
	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_WRITE){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	name = mosquitto_client_username(ed->client);
	if(!is_vin(name) || mosquitto_client_address(ed->client) == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	now = now_s();
	b = find_or_add(name, now);
	if(b == NULL){
		/* out of memory: let the message through rather than refuse every vehicle */
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	elapsed = now - b->refilled_at;
	if(elapsed > 0){
		b->messages += elapsed * config.messages_per_s;
		if(b->messages > config.burst_messages) b->messages = config.burst_messages;
		b->bytes += elapsed * config.bytes_per_s;
		if(b->bytes > config.burst_bytes) b->bytes = config.burst_bytes;
		b->refilled_at = now;
	}
	size = (double)ed->payloadlen;
	if(b->messages < 1.0 || b->bytes < size){
		b->refused++;
		/* At most one line a second per vehicle (security review 9, decision 0061): a
		 * refused Last Will costs its sender nothing but a reconnect, so a credential
		 * looping "CONNECT with a Will, drop the socket" (~2,000 a second) wrote a line
		 * per Will, ~0.6 MB/s into a log nothing bounded. The count says what was left
		 * out. */
		if(b->refused > 1 && now - b->logged_at < LOG_INTERVAL_S){
			b->unlogged++;
			return MOSQ_ERR_ADMINISTRATIVE_ACTION;
		}
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"budget: %s over its budget (%g messages, %g bytes a second; bursts of %g "
				"and %g): message of %lu bytes on %s refused (a publish: disconnecting "
				"without a PUBACK; a Last Will: not sent) (%lu refused so far, %lu of them "
				"not logged since the last line)",
				name, config.messages_per_s, config.bytes_per_s, config.burst_messages,
				config.burst_bytes, (unsigned long)ed->payloadlen, ed->topic, b->refused,
				b->unlogged);
		b->logged_at = now;
		b->unlogged = 0;
		return MOSQ_ERR_ADMINISTRATIVE_ACTION;
	}
	b->messages -= 1.0;
	b->bytes -= size;
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int read_option(struct mosquitto_opt *options, int count, const char *key, double *out)
{
	int i;
	for(i = 0; i < count; i++){
		if(!strcmp(options[i].key, key)){
			char *end = NULL;
			double value = strtod(options[i].value, &end);
			if(end == options[i].value || *end != '\0' || !(value > 0)){
				mosquitto_log_printf(MOSQ_LOG_ERR,
						"budget: plugin_opt_%s must be a positive number, got '%s'",
						key, options[i].value);
				return -1;
			}
			*out = value;
			return 0;
		}
	}
	mosquitto_log_printf(MOSQ_LOG_ERR, "budget: plugin_opt_%s is missing", key);
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	memset(&config, 0, sizeof(config));
	if(read_option(options, option_count, "messages_per_s", &config.messages_per_s)
			|| read_option(options, option_count, "burst_messages", &config.burst_messages)
			|| read_option(options, option_count, "bytes_per_s", &config.bytes_per_s)
			|| read_option(options, option_count, "burst_bytes", &config.burst_bytes)){
		return MOSQ_ERR_INVAL;
	}
	if(config.burst_messages < 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, "budget: plugin_opt_burst_messages must be >= 1");
		return MOSQ_ERR_INVAL;
	}
	plugin_id = identifier;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"budget: each vehicle may publish %g messages and %g bytes a second, in bursts "
			"of %g messages and %g bytes",
			config.messages_per_s, config.bytes_per_s, config.burst_messages,
			config.burst_bytes);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	size_t i;
	(void)userdata;
	(void)options;
	(void)option_count;
	if(plugin_id){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	}
	for(i = 0; i < config.buckets; i++){
		struct bucket *b = config.table[i];
		while(b){
			struct bucket *next = b->next;
			free(b);
			b = next;
		}
	}
	free(config.table);
	memset(&config, 0, sizeof(config));
	return MOSQ_ERR_SUCCESS;
}
