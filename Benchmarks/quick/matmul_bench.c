// Quick, dependency-free harness: compiles the CKernels sources directly (seconds, no SwiftPM).
// Usage: matmul_bench THREADS mv TYPE ROWS COLS TOKENS PRECISION(0 exact, 1 fast) | matmul_bench THREADS pool
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int bb(int t){switch(t){case 0:return 4;case 1:case 30:return 2;case 2:return 18;case 3:return 20;case 6:return 22;case 7:return 24;case 8:return 34;case 12:return 144;case 13:return 176;case 14:return 210;}return 0;}
static int be(int t){return (t==0||t==1||t==30)?1:(t>=12&&t<=14)?256:32;}
static void noop(void*c,int64_t s,int64_t e){(void)c;(void)s;(void)e;}
int main(int argc,char**argv){
  int threads=argc>1?atoi(argv[1]):2;
  cw_pool*pool=cw_pool_create(threads);
  const char*mode=argc>2?argv[2]:"mv";
  if(!strcmp(mode,"pool")){int N=200000;double t0=now();for(int i=0;i<N;i++)cw_pool_parallel_for(pool,64,1,noop,0);printf("pool dispatch %.2f us/call\n",(now()-t0)/N*1e6);return 0;}
  int type=argc>3?atoi(argv[3]):3; int rows=argc>4?atoi(argv[4]):1536, cols=argc>5?atoi(argv[5]):576; int tokens=argc>6?atoi(argv[6]):1; int prec=argc>7?atoi(argv[7]):1;
  int64_t rb=(int64_t)cols/be(type)*bb(type); size_t wbytes=(size_t)rows*rb;
  uint8_t*w=aligned_alloc(64,(wbytes+63)/64*64); for(size_t i=0;i<wbytes;i++)w[i]=rand();
  // sane fp16 scales: set every 2-byte to small fp16 values for non-float types
  if(be(type)>1){for(size_t b=0;b<wbytes/bb(type);b++){uint8_t*p=w+b*bb(type);uint16_t h=cw_fp32_to_fp16(0.01f);if(type==14)memcpy(p+208,&h,2);else{memcpy(p,&h,2);if(type==3||type==7||type>=12)memcpy(p+2,&h,2);}}}
  else if(type==1){uint16_t*h=(uint16_t*)w;for(size_t i=0;i<wbytes/2;i++)h[i]=cw_fp32_to_fp16((rand()%100)/100.f);} else if(type==0){float*f=(float*)w;for(size_t i=0;i<wbytes/4;i++)f[i]=(rand()%100)/100.f;}
  float*x=malloc(sizeof(float)*cols*tokens),*y=malloc(sizeof(float)*rows*tokens); for(int i=0;i<cols*tokens;i++)x[i]=(rand()%200-100)/100.f;
  int iters=1; double t; do{iters*=2; t=now(); for(int i=0;i<iters;i++)cw_matmul(type,w,rows,cols,rb,x,tokens,y,prec,pool); t=now()-t;}while(t<0.3);
  double best=1e9; for(int rep=0;rep<5;rep++){t=now(); for(int i=0;i<iters;i++)cw_matmul(type,w,rows,cols,rb,x,tokens,y,prec,pool); t=(now()-t)/iters; if(t<best)best=t;}
  printf("%s type=%d %dx%d tokens=%d prec=%d threads=%d: %.1f us  %.1f GB/s  %.1f GFLOP/s\n",cw_path_name(cw_kernel_path()),type,rows,cols,tokens,prec,threads,best*1e6,wbytes/best/1e9,2.0*rows*cols*tokens/best/1e9);
  return 0;}
