// Two builds of the CKernels sources in one process, alternating (like ab_matmul.c): the paged
// KV attention of a prefill (`kv_attention`, fast path) over a cache of 32-entry blocks in one format
// (FORMAT 0 fp32, 1 fp16, 2 int8 keys per channel / values per token; 3 the three formats by block),
// SmolLM2-135M's shape (9 query heads, 3 KV heads, head size 64), TOKENS queries after BASE cached
// entries. The first call of each build is compared bit for bit (`same=1`).
//   K=../../Sources/CKernels   (and the other revision's, e.g. from `git archive REV`)
//   clang -O3 -fPIC -shared -ffp-contract=fast -fno-math-errno -I $K/include -I $K $K/*.c -o libA.so -lpthread -lm
//   clang -O2 -I $K/include ab_kv_attention.c -o ab_kv_attention -ldl
//   ./ab_kv_attention ./libA.so ./libB.so THREADS TOKENS FORMAT [PAIRS [BASE]]
// Prints the medians of A's and B's time per call and of the per-pair ratio B/A, with its quartiles.
#include "kv_kernels.h"
#include "ckernels.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float rnd(void){return (float)(rand()%2001-1000)/1000.f;}
static int cmpd(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
typedef int (*att_fn)(const float*,float*,int64_t,int64_t,int,int,int,const kv_slab*,int64_t,float,float*,int,cw_pool*);
typedef cw_pool*(*pool_fn)(int);
typedef void (*q_fn)(const float*,int64_t,int,int8_t*,float*);
typedef void (*h_fn)(const float*,uint16_t*,int64_t);
int main(int argc,char**argv){
  if(argc<6){fprintf(stderr,"usage: ab_kv_attention libA.so libB.so THREADS TOKENS FORMAT [PAIRS [BASE]]\n");return 2;}
  int threads=atoi(argv[3]), tokens=atoi(argv[4]), fmt=atoi(argv[5]), pairs=argc>6?atoi(argv[6]):20, base=argc>7?atoi(argv[7]):0;
  if(threads<1||tokens<1||fmt<0||fmt>3||base<0){fprintf(stderr,"bad arguments\n");return 2;}
  if(pairs<4)pairs=4; if(pairs>1000)pairs=1000;
  int heads=9,kvh=3,hd=64,bs=32;
  att_fn f[2]; cw_pool*pool[2]; q_fn qr=0,qc=0; h_fn h16=0;
  for(int i=0;i<2;i++){ void*h=dlopen(argv[1+i],RTLD_NOW|RTLD_LOCAL); if(!h){fprintf(stderr,"%s\n",dlerror());return 1;}
    f[i]=(att_fn)dlsym(h,"kv_attention"); pool[i]=((pool_fn)dlsym(h,"cw_pool_create"))(threads);
    if(!i){qr=(q_fn)dlsym(h,"kv_quantize_per_row");qc=(q_fn)dlsym(h,"kv_quantize_per_channel");h16=(h_fn)dlsym(h,"kv_f32_to_f16");}}
  int total=base+tokens, blocks=(total+bs-1)/bs; kv_slab*sl=calloc((size_t)blocks*kvh,sizeof(kv_slab)); float*tmp=malloc(sizeof(float)*bs*hd);
  for(int b=0;b<blocks;b++)for(int h=0;h<kvh;h++){ int n=total-b*bs<bs?total-b*bs:bs; kv_slab*s=&sl[b*kvh+h]; s->n=n;
    int fb = fmt==3 ? (b%3) : fmt; s->k_fmt=s->v_fmt=fb;
    for(int kv=0;kv<2;kv++){ for(int i=0;i<n*hd;i++)tmp[i]=rnd()*(kv?1:3); void*d; float*sc=NULL;
      if(fb==0){d=malloc(sizeof(float)*n*hd);memcpy(d,tmp,sizeof(float)*n*hd);}
      else if(fb==1){d=malloc(2*(size_t)n*hd);h16(tmp,d,(int64_t)n*hd);}
      else{d=malloc((size_t)n*hd);sc=malloc(sizeof(float)*(kv?n:hd));if(kv)qr(tmp,n,hd,d,sc);else qc(tmp,n,hd,d,sc);}
      if(kv){s->v=d;s->v_scale=sc;}else{s->k=d;s->k_scale=sc;} } }
  float*q=malloc(sizeof(float)*tokens*heads*hd),*o[2]; for(int i=0;i<tokens*heads*hd;i++)q[i]=rnd();
  for(int i=0;i<2;i++){o[i]=malloc(sizeof(float)*tokens*heads*hd); f[i](q,o[i],tokens,base,heads,kvh,hd,sl,blocks,0.125f,NULL,1,pool[i]);}
  int same=!memcmp(o[0],o[1],sizeof(float)*tokens*heads*hd);
  int iters=1; double t; do{iters*=2;t=now();for(int i=0;i<iters;i++)f[0](q,o[0],tokens,base,heads,kvh,hd,sl,blocks,0.125f,NULL,1,pool[0]);t=now()-t;}while(t<0.05);
  double ta[1000],tb[1000],r[1000];
  for(int p=0;p<pairs;p++){ for(int k=0;k<2;k++){ int w=(p+k)%2; double t0=now(); for(int i=0;i<iters;i++)f[w](q,o[w],tokens,base,heads,kvh,hd,sl,blocks,0.125f,NULL,1,pool[w]); double d=(now()-t0)/iters; if(w)tb[p]=d; else ta[p]=d; } r[p]=tb[p]/ta[p]; }
  qsort(ta,pairs,sizeof(double),cmpd);qsort(tb,pairs,sizeof(double),cmpd);qsort(r,pairs,sizeof(double),cmpd);
  printf("tokens %d base %d fmt %d threads %d same=%d: A %.3f ms B %.3f ms; B/A median %.3f [%.3f %.3f]\n",tokens,base,fmt,threads,same,ta[pairs/2]*1e3,tb[pairs/2]*1e3,r[pairs/2],r[pairs/4],r[3*pairs/4]);
}
