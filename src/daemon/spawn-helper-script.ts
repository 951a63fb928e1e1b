/**
 * The spawn helper, a small Perl program (perl-base is part of every Debian and Ubuntu system).
 * Node starts a child by forking the whole daemon, which costs milliseconds of the event loop
 * per connection and grows with the heap; a 5 MB helper forks in a tenth of that, on the other
 * core. It connects the child's stdin and stdout to the daemon's private Unix socket, so no
 * descriptor has to be passed, and reports what became of each child.
 *
 * Requests on stdin:  `S id token argc envc bytes\n` then bytes of NUL-terminated argv and
 *                     environment entries (added to the helper's own environment);  `K id signo\n` (kill, unless already reaped).
 * Reports on stdout:  `R` ready;  `P id pid` started;  `E id errno` could not start;
 *                     `X id status -` exited;  `X id - signo` killed by a signal.
 * Each stdio connection begins with `token` and `i` or `o` and a newline.
 */
export const SPAWN_HELPER_SCRIPT = String.raw`
use strict;
use warnings;
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM pack_sockaddr_un);

# Node binds an abstract name either padded with NULs to the full sun_path or at its exact length,
# depending on its version: try both, announcing ourselves with a header no child has.
my $name = "\0" . $ARGV[0];
my $address;
for my $candidate (pack_sockaddr_un($name), pack_sockaddr_un($name . ("\0" x (108 - length $name)))) {
  socket(my $probe, AF_UNIX, SOCK_STREAM, 0) or die "tlsd spawn helper: socket: $!\n";
  next unless connect($probe, $candidate);
  syswrite($probe, ('0' x 32) . "p\n");
  $address = $candidate;
  last;
}
die "tlsd spawn helper: cannot connect to tlsd: $!\n" unless defined $address;
# The daemon manages shutdown; the helper leaves when its stdin ends. Children get the defaults.
my @ignored = qw(INT TERM HUP QUIT USR1 USR2);
$SIG{$_} = 'IGNORE' for @ignored;
binmode STDIN;
binmode STDOUT;
select(STDOUT);
$| = 1;
my (%id_of, %pid_of);
my $chld = POSIX::SigSet->new(POSIX::SIGCHLD());
my $none = POSIX::SigSet->new();
my %base = %ENV;
print "R\n";

$SIG{CHLD} = sub {
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $id = delete $id_of{$pid};
    next unless defined $id;
    delete $pid_of{$id};
    my $status = $?;
    print(($status & 127) ? "X $id - " . ($status & 127) . "\n" : "X $id " . ($status >> 8) . " -\n");
  }
};

sub stdio {
  my ($token, $which) = @_;
  socket(my $socket, AF_UNIX, SOCK_STREAM, 0) or return undef;
  connect($socket, $address) or return undef;
  my $header = "$token$which\n";
  (syswrite($socket, $header) // -1) == length($header) or return undef;
  return $socket;
}

while (defined(my $line = <STDIN>)) {
  chomp $line;
  my @word = split / /, $line;
  if ($word[0] eq 'K') {
    my $pid = $pid_of{$word[1]};
    kill($word[2], $pid) if defined $pid;
    next;
  }
  next unless $word[0] eq 'S';
  my (undef, $id, $token, $argc, $envc, $length) = @word;
  my $buffer = '';
  while (length($buffer) < $length) {
    my $got = read(STDIN, $buffer, $length - length($buffer), length($buffer));
    exit 0 unless $got;
  }
  my @field = split /\0/, $buffer, -1;
  pop @field;
  my @argv = @field[0 .. $argc - 1];
  my %env = map { /^([^=]*)=(.*)$/s ? ($1, $2) : () } @field[$argc .. $argc + $envc - 1];
  my $in = stdio($token, 'i');
  my $out = $in && stdio($token, 'o');
  unless ($out) { print "E $id " . ($! + 0) . "\n"; next; }
  my ($reader, $writer);
  unless (pipe($reader, $writer)) { print "E $id " . ($! + 0) . "\n"; next; }
  # Blocked until the child is recorded, so that its exit cannot be reaped unnamed.
  POSIX::sigprocmask(POSIX::SIG_BLOCK(), $chld);
  my $pid = fork();
  if (!defined $pid) {
    my $errno = $! + 0;
    POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $chld);
    print "E $id $errno\n";
    next;
  }
  if ($pid == 0) {
    $SIG{$_} = 'DEFAULT' for @ignored, 'CHLD';
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $none);
    POSIX::dup2(fileno($in), 0);
    POSIX::dup2(fileno($out), 1);
    %ENV = (%base, %env);
    { no warnings; exec { $argv[0] } @argv; }
    syswrite($writer, pack('i', $! + 0));
    POSIX::_exit(127);
  }
  close $writer;
  close $in;
  close $out;
  # The pipe closes on a successful exec (close-on-exec); an errno arrives if exec failed.
  my $failure = '';
  while (1) {
    my $got = sysread($reader, my $chunk, 4);
    if (defined $got) {
      $failure .= $chunk;
      last if $got == 0 || length($failure) >= 4;
    } elsif (!$!{EINTR}) {
      last;
    }
  }
  close $reader;
  if (length($failure) >= 4) {
    waitpid($pid, 0);
    POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $chld);
    print "E $id " . unpack('i', $failure) . "\n";
    next;
  }
  $id_of{$pid} = $id;
  $pid_of{$id} = $pid;
  print "P $id $pid\n";
  POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $chld);
}
`;
