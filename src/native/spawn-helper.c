/*
 * tlsd's spawn helper: starts the children of tlsd's sessions with vfork and exec (no copy of a
 * parent's page tables, no copy-on-write faults before the exec) and reports what
 * became of them. tlsd runs it once, after dropping its privileges; see src/daemon/spawn-helper.ts.
 *
 * Argument: the name of tlsd's private Unix socket (abstract namespace, without the leading NUL).
 * Requests on stdin:  `S id token argc envc bytes\n` then bytes of NUL-terminated argv and
 *                     environment entries (added to the helper's own environment);
 *                     `K id signo\n` (kill, unless already reaped).
 * Reports on stdout:  `R` ready;  `P id pid` started;  `E id errno` could not start;
 *                     `X id status -` exited;  `X id - signo` killed by a signal.
 * Each child's stdin and stdout are connections to that socket, each beginning with the token,
 * `i` or `o`, and a newline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/*
 * The daemon manages shutdown; the helper leaves when its stdin ends, or when a report cannot be
 * written (SIGPIPE ignored for that). Children get the default dispositions back.
 */
static const int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE};
static const struct sigaction default_disposition = {.sa_handler = SIG_DFL};

static struct sockaddr_un address;
static socklen_t address_length;

static void die(const char *what) {
  fprintf(stderr, "tlsd spawn helper: %s: %s\n", what, strerror(errno));
  exit(1);
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

/* ---- reports, written out once per turn of the loop ---- */

static char reports[65536];
static size_t pending;

static void flush_reports(void) {
  size_t done = 0;
  while (done < pending) {
    ssize_t wrote = write(1, reports + done, pending - done);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      exit(0); /* tlsd is gone */
    }
    done += (size_t)wrote;
  }
  pending = 0;
}

static void report(const char *format, long a, long b) {
  if (pending > sizeof reports - 64) flush_reports();
  pending += (size_t)snprintf(reports + pending, sizeof reports - pending, format, a, b);
}

/* ---- children ---- */

/* A connection to tlsd's socket that announces itself with `token` and `which`; -1 on failure. */
static int stdio_connection(const char *token, char which) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  char header[34];
  memcpy(header, token, 32);
  header[32] = which;
  header[33] = '\n';
  int saved;
  if (connect(fd, (struct sockaddr *)&address, address_length) == 0 && send(fd, header, sizeof header, MSG_NOSIGNAL) == (ssize_t)sizeof header) return fd;
  saved = errno;
  close(fd);
  errno = saved;
  return -1;
}

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
 * caller's variables live in a frame the child never touches. Returns the pid, or -1 and *error.
 */
static __attribute__((noinline)) pid_t spawn_child(char *const argv[], char *const env[], int in, int out, int *error) {
  static volatile int failure;
  failure = 0;
  pid_t pid = vfork();
  if (pid == 0) {
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) sigaction(ignored[i], &default_disposition, NULL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(in, 0) >= 0 && dup2(out, 1) >= 0) execvpe(argv[0], argv, env);
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

static void start(long id, const char *token, char **argv, char **added, long envc) {
  int in = stdio_connection(token, 'i');
  int out = in < 0 ? -1 : stdio_connection(token, 'o');
  int error = out < 0 ? errno : 0;
  char **env = error ? NULL : environment_with(added, envc);
  if (!error && !env) error = ENOMEM;
  pid_t pid = error ? -1 : spawn_child(argv, env, in, out, &error);
  free(env);
  if (in >= 0) close(in);
  if (out >= 0) close(out);
  if (pid < 0) {
    report("E %ld %ld\n", id, error);
    return;
  }
  /* SIGCHLD is blocked (read from a signalfd), so the exit cannot be reaped before this. */
  map_put(&id_of_pid, pid, id);
  map_put(&pid_of_id, id, pid);
  report("P %ld %ld\n", id, pid);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    long id = map_take(&id_of_pid, pid);
    if (!id) continue;
    map_take(&pid_of_id, id);
    if (WIFSIGNALED(status)) report("X %ld - %ld\n", id, WTERMSIG(status));
    else report("X %ld %ld -\n", id, WEXITSTATUS(status));
  }
}

/* ---- requests ---- */

static char *in_buffer;
static size_t in_size, in_length;

/* The largest body taken: far above what exec accepts (argv and environment together). */
#define MAX_BODY (64L << 20)

/* Handles the request at the front of the buffer; returns the bytes it took, 0 if incomplete. */
static size_t handle(const char *data, size_t length) {
  const char *newline = memchr(data, '\n', length);
  if (!newline) return 0;
  size_t line = (size_t)(newline - data) + 1;
  /* sscanf reads a string: the buffer has no NUL after the line. Request lines are short. */
  char text[160];
  size_t text_length = line - 1 < sizeof text - 1 ? line - 1 : sizeof text - 1;
  memcpy(text, data, text_length);
  text[text_length] = '\0';
  long id = 0, signo = 0, argc = 0, envc = 0, bytes = -1;
  if (text[0] == 'K') {
    if (sscanf(text, "K %ld %ld", &id, &signo) == 2 && id > 0) {
      long pid = map_get(&pid_of_id, id);
      if (pid) kill((pid_t)pid, (int)signo);
    }
    return line;
  }
  char token[34] = "";
  int got = text[0] == 'S' ? sscanf(text, "S %ld %33s %ld %ld %ld", &id, token, &argc, &envc, &bytes) : 0;
  int sized = got == 5 && bytes >= 0 && bytes <= MAX_BODY;
  if (sized && length - line < (size_t)bytes) return 0;
  size_t taken = line + (sized ? (size_t)bytes : 0);
  /* Each field takes at least its NUL, which bounds argc and envc (and what they allocate). */
  if (!sized || id < 1 || strlen(token) != 32 || argc < 1 || envc < 0 || bytes < 1 || argc > bytes || envc > bytes - argc) {
    /* tlsd sends no such request; if it did, the child it waits for is reported as failed. */
    if (got >= 1 && id > 0) report("E %ld %ld\n", id, EINVAL);
    return taken;
  }
  char *body = (char *)data + line;
  /* argv, its NULL, then the environment entries: pointers into the body. */
  char **fields = malloc((size_t)(argc + 1 + envc) * sizeof(char *));
  long n = 0;
  if (fields && body[bytes - 1] == '\0')
    for (char *p = body; p < body + bytes && n < argc + envc; p += strlen(p) + 1) fields[n < argc ? n : n + 1] = p, n++;
  if (!fields) report("E %ld %ld\n", id, ENOMEM);
  else if (n != argc + envc) report("E %ld %ld\n", id, EINVAL);
  else {
    fields[argc] = NULL;
    start(id, token, fields, fields + argc + 1, envc);
  }
  free(fields);
  return taken;
}

static void connect_to_tlsd(const char *name) {
  /* Node binds an abstract name either padded with NULs to the full sun_path or at its exact
   * length, depending on its version: try both, announcing ourselves with a header no child has. */
  size_t length = strlen(name);
  if (length + 1 > sizeof address.sun_path) {
    errno = ENAMETOOLONG;
    die("socket name");
  }
  address.sun_family = AF_UNIX;
  memcpy(address.sun_path + 1, name, length);
  socklen_t candidates[] = {(socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + length), (socklen_t)sizeof address};
  char probe[34];
  memset(probe, '0', 32);
  for (int i = 0; i < 2; i++) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    address_length = candidates[i];
    if (connect(fd, (struct sockaddr *)&address, address_length) == 0) {
      probe[32] = 'p';
      probe[33] = '\n';
      if (send(fd, probe, sizeof probe, MSG_NOSIGNAL) < 0) die("write");
      close(fd);
      return;
    }
    close(fd);
  }
  die("cannot connect to tlsd");
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: tlsd-spawn-helper SOCKET-NAME (started by tlsd)\n");
    return 2;
  }
  connect_to_tlsd(argv[1]);

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

  report("R\n", 0, 0);
  flush_reports();
  struct pollfd watched[2] = {{.fd = 0, .events = POLLIN}, {.fd = children, .events = POLLIN}};
  for (;;) {
    if (poll(watched, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
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
        return 0;
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
