// Quick harness for the paged KV attention kernel (compiles the CKernels sources directly, like
// matmul_bench.c). A prefill of TOKENS queries over a fresh cache of 32-entry blocks, all keys and
// values in one format (0 fp32, 1 fp16, 2 int8), SmolLM2-135M's shape by default (9 query heads,
// 3 KV heads, head size 64), through the fast path (what `fast` precision runs); FORMAT 3: fp32
// through the all-fp32 kernel that `exact` precision runs (bit-identical to cw_attention).
// Usage: kv_attention_bench THREADS TOKENS FORMAT [HEADS KV_HEADS HEAD_DIM [decode]]
// With `decode`: one query over a cache of TOKENS entries (a decode step at that depth) instead.
// BLOCK=N in the environment: blocks of N entries instead of 32 (short blocks: what a cache cut at
// every chunk edge had).
#include "kv_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float rnd(void){return (float)(rand()%2001-1000)/1000.f;}
int main(int argc,char**argv){
  int threads=argc>1?atoi(argv[1]):2, tokens=argc>2?atoi(argv[2]):512, fmt=argc>3?atoi(argv[3]):0, fast=1;
  if(fmt==3){fmt=0;fast=0;}
  int heads=argc>4?atoi(argv[4]):9, kvh=argc>5?atoi(argv[5]):3, hd=argc>6?atoi(argv[6]):64, bs=getenv("BLOCK")&&atoi(getenv("BLOCK"))>0?atoi(getenv("BLOCK")):32;
  int decode=argc>7&&!strcmp(argv[7],"decode");
  cw_pool*pool=cw_pool_create(threads);
  int blocks=(tokens+bs-1)/bs; kv_slab*sl=calloc((size_t)blocks*kvh,sizeof(kv_slab));
  float*tmp=malloc(sizeof(float)*bs*hd);
  for(int b=0;b<blocks;b++)for(int h=0;h<kvh;h++){
    int n=tokens-b*bs<bs?tokens-b*bs:bs; kv_slab*s=&sl[b*kvh+h]; s->n=n; s->k_fmt=s->v_fmt=fmt;
    for(int kv=0;kv<2;kv++){
      for(int i=0;i<n*hd;i++)tmp[i]=rnd()*(kv?1:3);
      void*d; float*sc=NULL;
      if(fmt==0){d=malloc(sizeof(float)*n*hd);memcpy(d,tmp,sizeof(float)*n*hd);}
      else if(fmt==1){d=malloc(2*(size_t)n*hd);kv_f32_to_f16(tmp,d,(int64_t)n*hd);}
      else{d=malloc((size_t)n*hd);sc=malloc(sizeof(float)*(kv?n:hd));if(kv)kv_quantize_per_row(tmp,n,hd,d,sc);else kv_quantize_per_channel(tmp,n,hd,d,sc);}
      if(kv){s->v=d;s->v_scale=sc;}else{s->k=d;s->k_scale=sc;}
    }
  }
  float*q=malloc(sizeof(float)*tokens*heads*hd),*out=malloc(sizeof(float)*tokens*heads*hd);
  for(int i=0;i<tokens*heads*hd;i++)q[i]=rnd();
  int iters=1; double t; do{iters*=2; t=now(); for(int i=0;i<iters;i++)kv_attention(q,out,decode?1:tokens,decode?tokens-1:0,heads,kvh,hd,sl,blocks,0.125f,NULL,fast,pool); t=now()-t;}while(t<0.3);
  double best=1e9; for(int rep=0;rep<7;rep++){t=now(); for(int i=0;i<iters;i++)kv_attention(q,out,decode?1:tokens,decode?tokens-1:0,heads,kvh,hd,sl,blocks,0.125f,NULL,fast,pool); t=(now()-t)/iters; if(t<best)best=t;}
  // multiply-adds: scores + weighted sum, each query over its causal prefix
  double macs=decode?2.0*heads*hd*tokens:2.0*heads*hd*((double)tokens*(tokens+1)/2);
  printf("%s %s %d tokens, format %d%s, heads %d/%d×%d, threads %d: %.3f ms  %.1f GFLOP/s\n",cw_path_name(cw_kernel_path()),decode?"decode at depth":"prefill",tokens,fmt,fast?"":" (exact kernel)",heads,kvh,hd,threads,best*1e3,2*macs/best/1e9);
  return 0;}
