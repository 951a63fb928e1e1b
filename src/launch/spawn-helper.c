/*
 * tlsd's spawn helper: starts the children of tlsd's sessions with vfork and exec (no copy of a
 * parent's page tables, no copy-on-write faults before the exec) and reports what
 * became of them. tlsd runs it once, after dropping its privileges; see src/launch/spawn-helper.ts.
 *
 * Who can reach it: tlsd alone. The helper has no name anywhere (no socket in any namespace, no
 * file): it talks to tlsd over two descriptors tlsd made and gave it at exec, its stdin (requests)
 * and Node's IPC channel (a socket pair, descriptor NODE_CHANNEL_FD: reports). Each child's stdin
 * and stdout are socket pairs made here; the child gets one end of each, and the other end goes to
 * tlsd over the channel (SCM_RIGHTS), so a child's stdio is a descriptor held by tlsd and the child
 * and nothing else. Another process can reach none of these short of ptrace or /proc/PID/fd, which
 * need tlsd's own user (or root).
 *
 * Arguments: `--protocol 2` (a helper of another protocol refuses to start, and tlsd falls back),
 * then optionally `--end-signal N` (N a signal number, 1 to 64): when tlsd is gone, its end of
 * stdin or of the channel closed or failing, the helper sends N to every child it has not reaped
 * before it leaves (tlsd's -s, which tlsd can no longer send). Without it they get only EOF.
 * Only tlsd (or its going) can set this off: it holds the other ends of stdin and of the channel.
 * Requests on stdin:  `S id argc envc bytes\n` then bytes of NUL-terminated argv and environment
 *                     entries (added to the helper's own environment);
 *                     `K id signo\n` (kill, unless already reaped).
 *                     A request that does not parse ends the helper (status 3): after one, where
 *                     the next request begins is unknown, and tlsd starts a new helper.
 * Reports on the channel, one JSON object a line, as Node's IPC channel frames messages ("json"
 * serialization); a descriptor rides on a message `{"cmd":"NODE_HANDLE","type":"net.Socket",
 * "msg":…}`, which Node's child_process hands to tlsd as a net.Socket:
 *   NODE_HANDLE {"ready":2}     ready (the handle shows that descriptors pass; tlsd closes it)
 *   NODE_HANDLE {"stdin":ID}    tlsd's end of the child's stdin;  NODE_HANDLE {"stdout":ID}: stdout
 *   {"started":ID,"pid":PID}    after both handles;  {"failed":ID,"errno":E}: could not start
 *   {"exited":ID,"status":S}    or {"exited":ID,"signal":N}
 * Node answers each handle with a NODE_HANDLE_ACK (or NACK) line, which the helper reads and drops.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PROTOCOL "2"
#define MALFORMED_STATUS 3

/*
 * The daemon manages shutdown; the helper leaves when its stdin ends, or when a report cannot be
 * written (SIGPIPE ignored for that). Children get the default dispositions back.
 */
static const int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE};
static const struct sigaction default_disposition = {.sa_handler = SIG_DFL};

/* Node's IPC channel to tlsd. */
static int channel = -1;

/* The highest signal number on Linux (its _NSIG - 1), for the K request and --end-signal. */
#define LAST_SIGNAL 64

/* --end-signal: what each child not yet reaped gets when tlsd is gone; 0 for nothing. */
static int end_signal;

static void die(const char *what) {
  fprintf(stderr, "tlsd spawn helper: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* Closes every descriptor from `first` to `last`; close_range where the kernel has it (5.9). */
static void close_from(unsigned first, unsigned last) {
  if (first > last) return;
#ifdef SYS_close_range
  if (syscall(SYS_close_range, first, last, 0) == 0) return;
#endif
  long limit = sysconf(_SC_OPEN_MAX);
  for (long fd = first; fd <= (long)last && fd < limit; fd++) close((int)fd);
}

/* ---- integer maps (open addressing, linear probing, deletion by backward shift) ---- */

typedef struct {
  long *keys; /* 0: empty slot */
  long *values;
  size_t mask;
  size_t count;
} map;

static size_t slot_of(const map *m, long key) {
  return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
}

static void map_init(map *m, size_t size) {
  m->keys = calloc(size, sizeof(long));
  m->values = calloc(size, sizeof(long));
  if (!m->keys || !m->values) die("calloc");
  m->mask = size - 1;
  m->count = 0;
}

static void map_put(map *m, long key, long value);

static void map_grow(map *m) {
  map bigger;
  map_init(&bigger, (m->mask + 1) * 2);
  for (size_t i = 0; i <= m->mask; i++)
    if (m->keys[i]) map_put(&bigger, m->keys[i], m->values[i]);
  free(m->keys);
  free(m->values);
  *m = bigger;
}

static void map_put(map *m, long key, long value) {
  if ((m->count + 1) * 2 > m->mask + 1) map_grow(m);
  size_t i = slot_of(m, key);
  while (m->keys[i] && m->keys[i] != key) i = (i + 1) & m->mask;
  if (!m->keys[i]) m->count++;
  m->keys[i] = key;
  m->values[i] = value;
}

static long map_get(const map *m, long key) {
  for (size_t i = slot_of(m, key); m->keys[i]; i = (i + 1) & m->mask)
    if (m->keys[i] == key) return m->values[i];
  return 0;
}

static long map_take(map *m, long key) {
  size_t i = slot_of(m, key);
  while (m->keys[i] && m->keys[i] != key) i = (i + 1) & m->mask;
  if (!m->keys[i]) return 0;
  long value = m->values[i];
  m->count--;
  /* Pull back the entries after the hole that would not be found past it. */
  for (size_t j = (i + 1) & m->mask; m->keys[j]; j = (j + 1) & m->mask) {
    size_t home = slot_of(m, m->keys[j]);
    if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
      m->keys[i] = m->keys[j];
      m->values[i] = m->values[j];
      i = j;
    }
  }
  m->keys[i] = 0;
  return value;
}

static map id_of_pid, pid_of_id;

/*
 * tlsd is gone: the helper leaves, and its children, with --end-signal, get that signal. Safe from
 * pid reuse: a pid in id_of_pid is the helper's own child not yet reaped (reap() takes it out as it
 * waits for it), so the pid is still that child's, if only a zombie's, and no other process's.
 */
static void tlsd_gone(void) {
  if (end_signal)
    for (size_t i = 0; i <= id_of_pid.mask; i++)
      if (id_of_pid.keys[i]) kill((pid_t)id_of_pid.keys[i], end_signal);
  exit(0);
}

/* ---- reports, written out once per turn of the loop (and before each descriptor sent) ---- */

static char reports[65536];
static size_t pending;

static void flush_reports(void) {
  size_t done = 0;
  while (done < pending) {
    ssize_t wrote = send(channel, reports + done, pending - done, MSG_NOSIGNAL);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      tlsd_gone();
    }
    done += (size_t)wrote;
  }
  pending = 0;
}

static void report(const char *format, long a, long b) {
  if (pending > sizeof reports - 128) flush_reports();
  pending += (size_t)snprintf(reports + pending, sizeof reports - pending, format, a, b);
}

/*
 * Sends `fd` to tlsd with a NODE_HANDLE message carrying `msg`; 0, or an errno. The message is one
 * sendmsg, so the descriptor arrives with its first byte and the kernel never joins it to the
 * next message (Node relies on that: one handle per read).
 */
static int send_descriptor(const char *msg, long id, int fd) {
  flush_reports();
  char text[128];
  int length = snprintf(text, sizeof text, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"%s\":%ld}}\n", msg, id);
  struct iovec part = {.iov_base = text, .iov_len = (size_t)length};
  union {
    struct cmsghdr header;
    char space[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &fd, sizeof fd);
  ssize_t sent;
  do sent = sendmsg(channel, &message, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0 && errno == EPIPE) tlsd_gone();
  if (sent < 0) return errno;
  if (sent != length) {
    /* Half a message on the channel: nothing after it could be framed. */
    fprintf(stderr, "tlsd spawn helper: a report was cut short\n");
    exit(1);
  }
  return 0;
}

/* Node's 'pipe' stdio leaves our end of the channel non-blocking: reports are written whole. */
static void take_channel(void) {
  const char *number = getenv("NODE_CHANNEL_FD");
  const char *mode = getenv("NODE_CHANNEL_SERIALIZATION_MODE");
  char *end;
  long fd = number ? strtol(number, &end, 10) : -1;
  struct stat status;
  if (!number || *end || fd < 3 || fd > 1 << 20 || fstat((int)fd, &status) != 0 || !S_ISSOCK(status.st_mode)) {
    fprintf(stderr, "tlsd spawn helper: no IPC channel from tlsd (NODE_CHANNEL_FD)\n");
    exit(2);
  }
  if (mode && strcmp(mode, "json") != 0) {
    fprintf(stderr, "tlsd spawn helper: the IPC channel must use json serialization, not %s\n", mode);
    exit(2);
  }
  channel = (int)fd;
  /* Children never see the channel, nor the variables that name it. */
  unsetenv("NODE_CHANNEL_FD");
  unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
  int flags = fcntl(channel, F_GETFL);
  if (flags < 0 || fcntl(channel, F_SETFL, flags & ~O_NONBLOCK) != 0 || fcntl(channel, F_SETFD, FD_CLOEXEC) != 0) die("fcntl");
  /* Whatever else tlsd's spawn passed down (descriptors its own parent leaked) goes now. */
  close_from(3, (unsigned)channel - 1);
  close_from((unsigned)channel + 1, ~0U);
}

/* ---- children ---- */

static size_t name_length(const char *entry) {
  const char *equals = strchr(entry, '=');
  return equals ? (size_t)(equals - entry) : strlen(entry);
}

static char **environment_with(char **added, long count) {
  size_t base = 0;
  while (environ[base]) base++;
  char **env = malloc((base + (size_t)count + 1) * sizeof(char *));
  if (!env) return NULL;
  size_t n = 0;
  for (size_t i = 0; i < base; i++) {
    size_t length = name_length(environ[i]);
    int replaced = 0;
    for (long j = 0; j < count && !replaced; j++) replaced = name_length(added[j]) == length && memcmp(added[j], environ[i], length) == 0;
    if (!replaced) env[n++] = environ[i];
  }
  for (long j = 0; j < count; j++) env[n++] = added[j];
  env[n] = NULL;
  return env;
}

/* The child's signal state: dispositions set to default, nothing blocked (see main). */
static sigset_t none;

/*
 * vfork, not posix_spawn: glibc's posix_spawn leaves its two internal signals (32 and 33) ignored
 * in the child, and ignored stays ignored across exec. Between vfork and exec the child shares
 * the helper's memory, so it only makes system calls and writes its errno to `failure`; the
 * helper catches no signal, so no handler can run there. A function of its own, so that the
 * caller's variables live in a frame the child never touches. The child holds exactly 0, 1 and
 * 2: every other descriptor here is close-on-exec, and it closes the rest as well in case.
 * Returns the pid, or -1 and *error.
 */
static __attribute__((noinline)) pid_t spawn_child(char *const argv[], char *const env[], int in, int out, int *error) {
  static volatile int failure;
  failure = 0;
  pid_t pid = vfork();
  if (pid == 0) {
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) sigaction(ignored[i], &default_disposition, NULL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(in, 0) >= 0 && dup2(out, 1) >= 0) {
#ifdef SYS_close_range
      syscall(SYS_close_range, 3U, ~0U, 0);
#endif
      execvpe(argv[0], argv, env);
    }
    failure = errno;
    _exit(127);
  }
  if (pid < 0) {
    *error = errno;
  } else if (failure) {
    *error = failure;
    waitpid(pid, NULL, 0);
    pid = -1;
  }
  return pid;
}

static void close_pair(int pair[2]) {
  if (pair[0] >= 0) close(pair[0]);
  if (pair[1] >= 0) close(pair[1]);
  pair[0] = pair[1] = -1;
}

/*
 * A socket pair for one of a child's stdio: [0] for tlsd, non-blocking as libuv expects of what it
 * is handed (it does not change a received descriptor's mode, and a blocking write would stop
 * tlsd's event loop), [1] for the child, blocking as programs expect of their stdio.
 */
static int stdio_pair(int pair[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return errno;
  int flags = fcntl(pair[0], F_GETFL);
  if (flags < 0 || fcntl(pair[0], F_SETFL, flags | O_NONBLOCK) != 0) return errno;
  return 0;
}

static void start(long id, char **argv, char **added, long envc) {
  int in[2] = {-1, -1}, out[2] = {-1, -1};
  int error = stdio_pair(in);
  if (!error) error = stdio_pair(out);
  char **env = error ? NULL : environment_with(added, envc);
  if (!error && !env) error = ENOMEM;
  pid_t pid = error ? -1 : spawn_child(argv, env, in[1], out[1], &error);
  free(env);
  /* The child's ends are the child's now; tlsd's go to tlsd. */
  if (in[1] >= 0) close(in[1]);
  if (out[1] >= 0) close(out[1]);
  in[1] = out[1] = -1;
  if (pid > 0) {
    /* SIGCHLD is blocked (read from a signalfd), so the exit cannot be reaped before this. */
    map_put(&id_of_pid, pid, id);
    map_put(&pid_of_id, id, pid);
    error = send_descriptor("stdin", id, in[0]);
    if (!error) error = send_descriptor("stdout", id, out[0]);
    if (error) kill(pid, SIGKILL); /* its exit is still reported, for an id tlsd has let go */
  }
  close_pair(in);
  close_pair(out);
  if (error) report("{\"failed\":%ld,\"errno\":%ld}\n", id, error);
  else report("{\"started\":%ld,\"pid\":%ld}\n", id, pid);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    long id = map_take(&id_of_pid, pid);
    if (!id) continue;
    map_take(&pid_of_id, id);
    if (WIFSIGNALED(status)) report("{\"exited\":%ld,\"signal\":%ld}\n", id, WTERMSIG(status));
    else report("{\"exited\":%ld,\"status\":%ld}\n", id, WEXITSTATUS(status));
  }
}

/* ---- requests ---- */

static char *in_buffer;
static size_t in_size, in_length;

/* The largest body taken: far above what exec accepts (argv and environment together). */
#define MAX_BODY (64L << 20)
/* A request line is short: a letter and at most five numbers. */
#define MAX_LINE 160

static void malformed(const char *why) {
  fprintf(stderr, "tlsd spawn helper: malformed request (%s); leaving\n", why);
  flush_reports();
  exit(MALFORMED_STATUS);
}

/* Handles the request at the front of the buffer; returns the bytes it took, 0 if incomplete. */
static size_t handle(const char *data, size_t length) {
  const char *newline = memchr(data, '\n', length < MAX_LINE ? length : MAX_LINE);
  if (!newline) {
    if (length >= MAX_LINE) malformed("a line too long");
    return 0;
  }
  size_t line = (size_t)(newline - data) + 1;
  /* sscanf reads a string: the buffer has no NUL after the line. */
  char text[MAX_LINE + 1];
  memcpy(text, data, line - 1);
  text[line - 1] = '\0';
  long id = 0, signo = 0, argc = 0, envc = 0, bytes = -1;
  int used = 0;
  if (text[0] == 'K') {
    if (sscanf(text, "K %ld %ld%n", &id, &signo, &used) != 2 || text[used] || id < 1 || signo < 1 || signo > LAST_SIGNAL) malformed("a bad K line");
    long pid = map_get(&pid_of_id, id);
    if (pid) kill((pid_t)pid, (int)signo);
    return line;
  }
  if (text[0] != 'S' || sscanf(text, "S %ld %ld %ld %ld%n", &id, &argc, &envc, &bytes, &used) != 4 || text[used]) malformed("a bad request line");
  /* Each field takes at least its NUL, which bounds argc and envc (and what they allocate). */
  if (id < 1 || argc < 1 || envc < 0 || bytes < 1 || bytes > MAX_BODY || argc > bytes || envc > bytes - argc) malformed("counts out of range");
  if (length - line < (size_t)bytes) return 0;
  char *body = (char *)data + line;
  if (body[bytes - 1] != '\0') malformed("a body without its final NUL");
  /* argv, its NULL, then the environment entries: pointers into the body. */
  char **fields = malloc((size_t)(argc + 1 + envc) * sizeof(char *));
  if (!fields) die("malloc");
  long n = 0;
  for (char *p = body; p < body + bytes; p += strlen(p) + 1) {
    if (n == argc + envc) malformed("more fields than counted");
    fields[n < argc ? n : n + 1] = p;
    n++;
  }
  if (n != argc + envc) malformed("fewer fields than counted");
  fields[argc] = NULL;
  start(id, fields, fields + argc + 1, envc);
  free(fields);
  return line + (size_t)bytes;
}

/* Reads what tlsd sent on the channel (acknowledgements of descriptors) and drops it. */
static void drain_channel(void) {
  char sink[4096];
  for (;;) {
    ssize_t got = recv(channel, sink, sizeof sink, MSG_DONTWAIT);
    if (got > 0) continue;
    if (got == 0) tlsd_gone();
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    tlsd_gone();
  }
}

/* Ready, with a descriptor: if tlsd's Node does not take descriptors this way, it never sees it. */
static void announce_ready(void) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) die("socketpair");
  errno = send_descriptor("ready", strtol(PROTOCOL, NULL, 10), pair[0]);
  if (errno) die("sendmsg");
  close_pair(pair);
}

/* The value of --end-signal: a signal number in digits alone, or the helper does not start. */
static int parse_end_signal(const char *text) {
  char *end;
  long signo = text[0] >= '0' && text[0] <= '9' ? strtol(text, &end, 10) : 0;
  if (signo < 1 || signo > LAST_SIGNAL || *end) {
    fprintf(stderr, "tlsd spawn helper: --end-signal takes a signal number from 1 to %d, not \"%s\"\n", LAST_SIGNAL, text);
    exit(2);
  }
  return (int)signo;
}

int main(int argc, char **argv) {
  if ((argc != 3 && argc != 5) || strcmp(argv[1], "--protocol") != 0 || strcmp(argv[2], PROTOCOL) != 0 || (argc == 5 && strcmp(argv[3], "--end-signal") != 0)) {
    fprintf(stderr, "usage: tlsd-spawn-helper --protocol " PROTOCOL " [--end-signal N] (started by tlsd)\n");
    return 2;
  }
  if (argc == 5) end_signal = parse_end_signal(argv[4]);
  take_channel();

  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigemptyset(&none);
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) signal(ignored[i], SIG_IGN);
  if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0) die("sigprocmask");
  int children = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (children < 0) die("signalfd");
  /* Small, so that growing and deleting are exercised by every test with more than 8 children. */
  map_init(&id_of_pid, 16);
  map_init(&pid_of_id, 16);
  in_size = 65536;
  in_buffer = malloc(in_size);
  if (!in_buffer) die("malloc");

  announce_ready();
  struct pollfd watched[3] = {{.fd = 0, .events = POLLIN}, {.fd = children, .events = POLLIN}, {.fd = channel, .events = POLLIN}};
  for (;;) {
    if (poll(watched, 3, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (watched[2].revents) drain_channel();
    if (watched[1].revents) {
      struct signalfd_siginfo info;
      while (read(children, &info, sizeof info) > 0) {
      }
      reap();
    }
    if (watched[0].revents) {
      if (in_length == in_size) {
        char *bigger = realloc(in_buffer, in_size * 2);
        if (!bigger) die("realloc");
        in_buffer = bigger;
        in_size *= 2;
      }
      ssize_t got = read(0, in_buffer + in_length, in_size - in_length);
      if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
        flush_reports();
        tlsd_gone();
      }
      if (got > 0) in_length += (size_t)got;
      size_t used = 0, took;
      while (used < in_length && (took = handle(in_buffer + used, in_length - used)) > 0) used += took;
      memmove(in_buffer, in_buffer + used, in_length - used);
      in_length -= used;
    }
    flush_reports();
  }
}
