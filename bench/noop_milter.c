/*
 * The C libmilter reference for bench/: a milter that does nothing, on the protocol amzguard negotiates
 * with the benchmark's config, so that its figure is what any milter on libmilter can reach on that
 * machine in the same run (bench/pipeline.py builds it with the system's gcc and libmilter-dev).
 *
 * Negotiated like amzguard (milter/amzguard/adapter.py): no HELO, end-of-headers or unknown commands;
 * connect, MAIL and header fields no-reply; RCPT and DATA answered; the body step kept and each body
 * answered SKIP (amzguard reads review requests' bodies); only the actions amzguard asks for. Unlike
 * amzguard it accepts nothing early: every message gets its header fields and end of message.
 *
 * Usage: noop_milter SOCKET   (libmilter syntax: unix:/path or inet:PORT@HOST)
 */

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <libmilter/mfapi.h>

#define WANTED_ACTIONS (SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT | SMFIF_CHGHDRS)
#define NO_STEPS (SMFIP_NOHELO | SMFIP_NOEOH | SMFIP_NOUNKNOWN)
#define NO_REPLY (SMFIP_NR_CONN | SMFIP_NR_MAIL | SMFIP_NR_HDR)

/* What the MTA agreed to; the same for every connection of one MTA, written before the first callback. */
static unsigned long agreed_steps;

static sfsistat no_reply_or(unsigned long flag)
{
    return (agreed_steps & flag) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                             unsigned long *pf2, unsigned long *pf3)
{
    (void) ctx;
    (void) f2;
    (void) f3;
    *pf0 = f0 & WANTED_ACTIONS;
    *pf1 = f1 & (NO_STEPS | NO_REPLY | SMFIP_SKIP);
    *pf2 = 0;
    *pf3 = 0;
    agreed_steps = *pf1;
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
    (void) ctx;
    (void) host;
    (void) addr;
    return no_reply_or(SMFIP_NR_CONN);
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    (void) ctx;
    (void) argv;
    return no_reply_or(SMFIP_NR_MAIL);
}

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
    (void) ctx;
    (void) argv;
    return SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx)
{
    (void) ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void) ctx;
    (void) name;
    (void) value;
    return no_reply_or(SMFIP_NR_HDR);
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    (void) ctx;
    (void) chunk;
    (void) len;
    return (agreed_steps & SMFIP_SKIP) ? SMFIS_SKIP : SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
    (void) ctx;
    return SMFIS_CONTINUE;
}

static struct smfiDesc description = {
    .xxfi_name = "noop-c",
    .xxfi_version = SMFI_VERSION,
    .xxfi_flags = WANTED_ACTIONS,
    .xxfi_connect = on_connect,
    .xxfi_envfrom = on_envfrom,
    .xxfi_envrcpt = on_envrcpt,
    .xxfi_header = on_header,
    .xxfi_body = on_body,
    .xxfi_eom = on_eom,
    .xxfi_data = on_data,
    .xxfi_negotiate = on_negotiate,
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    /* A unix socket must be connectable by Postfix: the benchmark starts us with group postfix. */
    umask(007);
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_settimeout(30) == MI_FAILURE
        || smfi_register(description) == MI_FAILURE) {
        fprintf(stderr, "noop_milter: cannot set up %s\n", argv[1]);
        return 1;
    }
    fprintf(stderr, "noop C milter listening on %s\n", argv[1]);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
