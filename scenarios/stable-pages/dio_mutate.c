/*
 * dio_mutate: O_DIRECT I/O while another thread keeps changing the buffer.
 *
 * On a device that needs stable pages (T10 PI: the guard tag is a CRC of the data), a kernel that
 * hands the user's pages straight to the device computes or checks the guard while the data
 * changes under it: writes are rejected by the device, reads fail verification, both as EILSEQ.
 * A kernel that bounces such I/O through a private buffer sees no errors.
 *
 * Prints one JSON object: operations, successes, short I/O, errno counts, buffer mutations.
 * --fault no-mutation starts the thread but never lets it change the buffer: the lab must call
 * such a run an ERROR (nothing was tested), never a PASS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <time.h>
#include <unistd.h>

#define MAX_ERRNO 256

static atomic_int stop_flag;
static atomic_ulong mutations;
static unsigned char *buf;
static size_t bs;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Rewrites the whole buffer over and over; every pass is one mutation. */
static void *mutator(void *arg)
{
	int frozen = *(int *)arg;
	unsigned char v = 1;
	if (frozen) {
		atomic_store(&mutations, 0);
		return NULL;
	}
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
		volatile unsigned char *p = buf;
		for (size_t i = 0; i < bs; i += 64)
			p[i] = v;
		v++;
		atomic_fetch_add_explicit(&mutations, 1, memory_order_relaxed);
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: dio_mutate --path P --direction write|read --bs N --duration S "
			"[--size BYTES] [--mutate 0|1] [--prefill 0|1] [--fault no-mutation]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *path = NULL, *direction = "write";
	double duration = 10;
	long long size = 256LL << 20;
	int mutate = 1, prefill = 1, freeze = 0;
	static struct option opts[] = {
		{"path", required_argument, 0, 'p'}, {"direction", required_argument, 0, 'd'},
		{"bs", required_argument, 0, 'b'}, {"duration", required_argument, 0, 't'},
		{"size", required_argument, 0, 's'}, {"mutate", required_argument, 0, 'm'},
		{"prefill", required_argument, 0, 'f'}, {"fault", required_argument, 0, 'F'}, {0, 0, 0, 0}};
	int c;
	bs = 65536;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p': path = optarg; break;
		case 'd': direction = optarg; break;
		case 'b': bs = strtoull(optarg, NULL, 0); break;
		case 't': duration = atof(optarg); break;
		case 's': size = strtoll(optarg, NULL, 0); break;
		case 'm': mutate = atoi(optarg); break;
		case 'f': prefill = atoi(optarg); break;
		case 'F':
			if (strcmp(optarg, "no-mutation"))
				usage();
			freeze = 1;
			break;
		default: usage();
		}
	}
	int writing = strcmp(direction, "write") == 0;
	if (!path || (!writing && strcmp(direction, "read")) || bs == 0 || bs % 512)
		usage();

	int fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0644);
	if (fd < 0) {
		printf("{\"error\": \"open %s: %s\", \"errno\": %d}\n", path, strerror(errno), errno);
		return 1;
	}
	struct stat st;
	fstat(fd, &st);
	if (S_ISBLK(st.st_mode)) {
		unsigned long long dev_size = 0;
		ioctl(fd, BLKGETSIZE64, &dev_size);
		if ((long long)dev_size < size)
			size = dev_size;
	}
	long long slots = size / (long long)bs;
	if (slots < 1) {
		printf("{\"error\": \"target smaller than one block\"}\n");
		return 1;
	}
	if (posix_memalign((void **)&buf, 4096, bs)) {
		printf("{\"error\": \"out of memory\"}\n");
		return 1;
	}
	memset(buf, 0xa5, bs);

	/* Reads need data written with valid protection information first, without interference. */
	unsigned long prefill_errors = 0;
	if (!writing && prefill)
		for (long long i = 0; i < slots; i++)
			if (pwrite(fd, buf, bs, i * (long long)bs) != (ssize_t)bs)
				prefill_errors++;
	if (!writing && prefill)
		fsync(fd);

	pthread_t thread;
	if (mutate) {
		int rc = pthread_create(&thread, NULL, mutator, &freeze);
		if (rc) {
			printf("{\"error\": \"cannot start the mutating thread: %s\"}\n", strerror(rc));
			return 1;
		}
		/* The mutator must be running before the first I/O, or a short run tests nothing. */
		while (!freeze && !atomic_load(&mutations))
			sched_yield();
	}

	unsigned long ops = 0, ok = 0, short_io = 0;
	unsigned long errs[MAX_ERRNO] = {0};
	double start = now(), end = start + duration;
	long long slot = 0;
	while (now() < end) {
		off_t off = slot * (long long)bs;
		ssize_t r = writing ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
		ops++;
		if (r == (ssize_t)bs)
			ok++;
		else if (r >= 0)
			short_io++;
		else
			errs[errno < MAX_ERRNO ? errno : 0]++;
		slot = (slot + 1) % slots;
	}
	double elapsed = now() - start;
	atomic_store(&stop_flag, 1);
	if (mutate)
		pthread_join(thread, NULL);
	close(fd);

	printf("{\"path\": \"%s\", \"direction\": \"%s\", \"bs\": %zu, \"mutate\": %s, \"seconds\": %.3f, "
	       "\"size\": %lld, \"ops\": %lu, \"ok\": %lu, \"short\": %lu, \"mutations\": %lu, "
	       "\"prefill_errors\": %lu, \"mib_per_s\": %.2f, \"errno\": {",
	       path, direction, bs, mutate ? "true" : "false", elapsed, size, ops, ok, short_io,
	       (unsigned long)atomic_load(&mutations), prefill_errors,
	       ok * (double)bs / (1 << 20) / (elapsed > 0 ? elapsed : 1));
	int first = 1;
	for (int e = 0; e < MAX_ERRNO; e++)
		if (errs[e]) {
			printf("%s\"%d\": %lu", first ? "" : ", ", e, errs[e]);
			first = 0;
		}
	printf("}}\n");
	return 0;
}
