// STREAM-like read-bandwidth probe over 256 MB (best of 10). Usage: read_probe THREADS
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){int th=atoi(argv[1]); cw_pool*p=cw_pool_create(th); int64_t n=(int64_t)64<<20; float*a=aligned_alloc(64,n*4); for(int64_t i=0;i<n;i++)a[i]=1;
 double best=1e9; for(int r=0;r<10;r++){double t=now(); volatile double s=cw_read_probe(a,n,p); (void)s; t=now()-t; if(t<best)best=t;} printf("read bw threads=%d: %.1f GB/s\n",th,n*4/best/1e9);}
