/* tvmsqz's parallel launcher: threads claim chunks of a parallel loop as they free up.
 *
 * TVM's generated code runs every parallel loop through the function pointer
 * `__TVMBackendParallelLaunch` of its module, which the runtime points at its own thread pool when
 * it loads the library. That pool gives each thread one equal chunk (task_id of num_task) and pins
 * the threads to cores, so every kernel waits for the slowest core: on a VM whose second vCPU the
 * host slows, or beside a busy process on one core, the model runs many times slower (measured in
 * benchmarks/slow_core.py). This launcher splits each loop into CHUNKS chunks per thread (TVM's code
 * computes its range from task_id and penv->num_task, so more tasks than threads is legal), lets
 * every thread (the caller included) claim the next chunk with one atomic compare-and-swap, and
 * pins nothing: a slow core costs the chunks it did not take, not the whole kernel.
 *
 * Compiled into each CPU artifact by the CPU backend's export (`export`); the loader calls
 * tvmsqz_parallel_install() after TVM loaded the module (set TVMSQZ_PARALLEL=static to keep TVM's
 * pool). Knobs: TVM_NUM_THREADS (threads, default the CPUs this process may run on) and
 * TVMSQZ_PARALLEL_CHUNKS (chunks per thread, default 4).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* Defined by TVM's code generator in this same library: the launcher its kernels call through
 * (weak: a library without parallel loops has none, and then nothing is installed). */
extern void* __TVMBackendParallelLaunch __attribute__((weak));

#define MAX_THREADS 256
#define SPIN_BEFORE_SLEEP 20000 /* spin rounds (~0.1-1 ms) a worker waits for the next job before it sleeps */

static int n_threads = 1;
static int chunks_per_thread = 4;
static pthread_once_t started = PTHREAD_ONCE_INIT;

/* The current job. `claim` packs (generation << 32 | next chunk): a claim is valid only for the
 * generation the worker read the job of, so a late worker never runs a chunk of the next job. */
static _Atomic(FTVMParallelLambda) job_f;
static _Atomic(void*) job_cdata;
static _Atomic int job_chunks;
static _Atomic uint64_t claim;
static _Alignas(64) _Atomic uint32_t generation; /* own cache line: spinning workers read it */
static _Atomic int done;
static _Atomic int error_code;
static _Atomic int sleepers;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
/* One job at a time: a launch from a second application thread (two VMs of one artifact run from
 * two Python threads share this state) runs inline instead of overwriting the running job. */
static pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int inside_job; /* a nested launch runs inline */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

/* Run chunks of generation `gen` until none is left. */
static void run_chunks(uint32_t gen) {
  FTVMParallelLambda f = atomic_load(&job_f);
  void* cdata = atomic_load(&job_cdata);
  int chunks = atomic_load(&job_chunks);
  TVMParallelGroupEnv env = {NULL, chunks};
  int ran = 0;
  for (;;) {
    uint64_t cur = atomic_load(&claim);
    if ((uint32_t)(cur >> 32) != gen || (int)(uint32_t)cur >= chunks) break;
    if (!atomic_compare_exchange_weak(&claim, &cur, cur + 1)) continue;
    inside_job = 1;
    int rc = f((int)(uint32_t)cur, &env, cdata);
    inside_job = 0;
    if (rc != 0) atomic_store(&error_code, rc);
    ++ran;
  }
  /* Once per thread, not per chunk: the caller still waits for every chunk (done == chunks). */
  if (ran) atomic_fetch_add(&done, ran);
}

static void* worker(void* arg) {
  (void)arg;
  uint32_t seen = atomic_load(&generation);
  for (;;) {
    int spins = 0;
    uint32_t gen;
    while ((gen = atomic_load(&generation)) == seen) {
      if (++spins < SPIN_BEFORE_SLEEP) {
        /* Spin, but let a thread that shares this core (the caller waiting on a chunk, another
         * process) run now and then: a spinning waiter must not starve the one it waits for. */
        if (spins % 256 == 0) sched_yield(); else cpu_relax();
        continue;
      }
      pthread_mutex_lock(&sleep_lock);
      atomic_fetch_add(&sleepers, 1); /* seq_cst: the launcher sees it, or this sees the new job */
      while ((gen = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &sleep_lock);
      atomic_fetch_sub(&sleepers, 1);
      pthread_mutex_unlock(&sleep_lock);
      break;
    }
    seen = gen;
    run_chunks(gen);
  }
  return NULL;
}

static int allowed_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static void start_workers(void) {
  const char* env = getenv("TVM_NUM_THREADS");
  n_threads = env && atoi(env) > 0 ? atoi(env) : allowed_cpus();
  if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
  env = getenv("TVMSQZ_PARALLEL_CHUNKS");
  if (env && atoi(env) > 0) chunks_per_thread = atoi(env);
  for (int i = 1; i < n_threads; ++i) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker, NULL) != 0) {
      n_threads = i; /* run with the threads that started */
      pthread_attr_destroy(&attr);
      break;
    }
    pthread_attr_destroy(&attr);
  }
}

int tvmsqz_parallel_launch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  (void)num_task; /* TVM passes 0: "as many as you have" */
  pthread_once(&started, start_workers);
  /* Nested, single-threaded, or another thread's job running: run inline, as one chunk. */
  if (inside_job || n_threads <= 1 || pthread_mutex_trylock(&launch_lock) != 0) {
    TVMParallelGroupEnv env = {NULL, 1};
    return flambda(0, &env, cdata);
  }
  int chunks = n_threads * chunks_per_thread;
  atomic_store(&job_f, flambda);
  atomic_store(&job_cdata, cdata);
  atomic_store(&job_chunks, chunks);
  atomic_store(&done, 0);
  atomic_store(&error_code, 0);
  uint32_t gen = atomic_load(&generation) + 1;
  atomic_store(&claim, (uint64_t)gen << 32);
  atomic_store(&generation, gen);
  if (atomic_load(&sleepers) > 0) {
    pthread_mutex_lock(&sleep_lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleep_lock);
  }
  run_chunks(gen);
  int spins = 0;
  while (atomic_load(&done) < chunks) {
    if (++spins < 4096) {
      cpu_relax();
    } else {
      sched_yield(); /* a chunk's thread was descheduled: give it the core */
    }
  }
  int rc = atomic_load(&error_code);
  pthread_mutex_unlock(&launch_lock);
  return rc;
}

/* Point this library's kernels at tvmsqz_parallel_launch; returns the thread count it will use. */
int tvmsqz_parallel_install(void) {
  if (&__TVMBackendParallelLaunch == NULL) return 0;
  __TVMBackendParallelLaunch = (void*)&tvmsqz_parallel_launch;
  pthread_once(&started, start_workers);
  return n_threads;
}
