// SPDX-License-Identifier: GPL-2.0
/*
 * disnvm: hand an NVMe controller to one userspace process (libnvm), safely.
 *
 * A PCI driver with no ID table: it binds only to devices it is pointed at (driver_override or
 * new_id) and refuses anything that is not an NVMe controller (class 01:08:02). Each bound
 * controller gets /dev/disnvmN (a misc device; N in probe order). Through an open file a process
 * maps BAR0 (uncached) and asks for host memory to be pinned and mapped for the controller's DMA
 * through the DMA API, so it works with the IOMMU on as well as off; the uapi is
 * c/include/disnvm_ioctl.h.
 *
 * One open file per device at a time. When it is released (close and munmap, or the process dies,
 * SIGKILL included) the controller is shut down and disabled and bus mastering cleared before any
 * of the memory it was given is unmapped and unpinned: a dead process leaves no DMA behind.
 *
 * Who may open it: whoever holds the file can make the controller read and write any bus address
 * it likes. That is only confined when an IOMMU translates for the controller and no other device
 * shares its IOMMU group (disnvm_isolated()); otherwise open() needs CAP_SYS_RAWIO, the
 * capability that also guards /dev/mem and raw I/O ports.
 *
 * Pinned host pages are charged to the opener's RLIMIT_MEMLOCK (mm->locked_vm), as VFIO's type1
 * driver charges its pins: a user cannot pin more memory through the module than it could mlock().
 *
 * Imported dma-bufs (DISNVM_IOC_MAP_DMABUF) are attached to the controller as a dynamic importer:
 * their exporter may take them back (move_notify). The module then stops the controller before it
 * lets the memory go, and keeps it from DMA-ing again until the process has unmapped the import.
 *
 * Locking: dev->lock (mutex) guards the open file, its mapping list and the gone flag, and is held
 * across pinning and memlock accounting (which take mmap_lock): dev->lock -> mmap_lock. BAR0 pages
 * are inserted by the fault handler, which runs under mmap_lock and takes only dev->bar_lock:
 * mmap_lock -> bar_lock. Removal sets gone under both and zaps the user's BAR0 mappings, so nothing
 * reaches a BAR that is about to be released. A dma-buf's reservation lock (resv) is taken under
 * dev->lock when importing and releasing, and the exporter holds it when it calls move_notify,
 * which therefore must not take dev->lock: dev->lock -> resv. dev->hw_lock is innermost
 * (dev->lock -> resv -> hw_lock): it serialises stopping the controller, setting bus mastering and
 * the revoked state of imports, so no DMA can restart between a revocation and its unmapping.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/anon_inodes.h>
#include <linux/capability.h>
#include <linux/delay.h>
#include <linux/dma-buf.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-resv.h>
#include <linux/dma-mapping.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/iommu.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nvme.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "disnvm_ioctl.h"

#ifdef DISNVM_CUDA
#include <nv-p2p.h>
#endif

#define DISNVM_NAME "disnvm"

/* A BAR0 smaller than this has no room for the admin queue doorbells (NVMe 1.4 3.1.24, 0x1000). */
#define DISNVM_BAR0_MIN SZ_8K

/* Shutdown notification (CC.SHN) is given this long before the controller is disabled anyway. */
#define DISNVM_SHUTDOWN_MS 5000

/* 4 KiB entries in the address list per CPU page. */
#define DISNVM_SUBPAGES (PAGE_SIZE / DISNVM_PAGE_SIZE)

struct disnvm_file;

struct disnvm_dev {
	struct kref ref;		/* the binding, plus one per open file */
	struct pci_dev *pdev;
	void __iomem *bar;		/* kernel mapping of BAR0, for disnvm_quiesce() */
	resource_size_t bar_start;
	resource_size_t bar_len;
	int id;				/* the N of /dev/disnvmN */
	char name[24];
	struct miscdevice misc;

	struct mutex lock;		/* file, gone, and the file's mappings */
	struct disnvm_file *file;	/* the open file, or NULL */
	bool gone;			/* unbound: BAR0 and DMA are no longer ours */
	struct mutex bar_lock;		/* gone, seen from the BAR0 fault handler */
	struct mutex hw_lock;		/* quiesce, bus mastering, revoked imports */

	atomic64_t pinned;		/* 4 KiB pages pinned, all files: sysfs disnvm_pinned_pages */
	atomic64_t dmabufs;		/* live dma-buf imports, all files: sysfs disnvm_dmabufs */
};

struct disnvm_file {
	struct disnvm_dev *dev;
	struct mm_struct *mm;		/* the opener's; only it may map and unmap */
	struct address_space *mapping;	/* where its BAR0 vmas hang, for zapping on removal */
	struct list_head mappings;	/* struct disnvm_mapping, under dev->lock */
	u64 pinned;			/* 4 KiB pages */
	u64 nmappings;
	/* dma-buf imports */
	u64 next_handle;
	u64 ndmabufs;
	u64 dmabuf_pages;		/* 4 KiB pages */
	u64 revoked;			/* revoked by their exporter, not yet unmapped: under hw_lock */
	struct list_head bars;		/* struct disnvm_bar made from this file, under dev->lock */
	u64 nbars;
};

/*
 * A descriptor that maps BAR0 and does nothing else (DISNVM_IOC_BAR_FD): what the opener hands a
 * process it serves (libnvm's lib/share), so that process rings the doorbells of its own queues.
 * It maps no memory for DMA (no ioctl at all), and the register page is read-only through it: CC,
 * AQA, ASQ and ACQ, where the admin queue lies, stay the opener's to write. Its mappings hang on
 * the node's address_space, so the existing zaps reach them; once the opener's file is released
 * (or the device unbound) it is revoked: the next touch of any of its pages finds a page of
 * plain memory instead of the BAR, so a late doorbell write lands nowhere and a read sees zeroes,
 * and nothing reaches a controller that someone else may own by then.
 */
struct disnvm_bar {
	struct list_head list;		/* on owner->bars, under dev->lock */
	struct disnvm_dev *dev;		/* a reference (dev->ref) */
	struct disnvm_file *owner;	/* NULL once the opener's file is released: under dev->lock */
	struct inode *inode;		/* the node's inode (ihold): its i_mapping holds our vmas */
	struct page *sink;		/* what a revoked mapping shows */
	bool revoked;			/* under dev->bar_lock */
};

enum disnvm_p2p_state {
	DISNVM_P2P_LIVE,
	DISNVM_P2P_RELEASING,		/* we are giving the pages back */
	DISNVM_P2P_REVOKED,		/* the NVIDIA driver took them back (free callback) */
};

enum disnvm_kind {
	DISNVM_HOST,			/* MAP_HOST: pinned process memory */
	DISNVM_GPU,			/* MAP_DEVICE: CUDA memory through NV-P2P */
	DISNVM_DMABUF,			/* MAP_DMABUF: an imported dma-buf */
};

struct disnvm_mapping {
	struct list_head list;
	u64 vaddr;			/* MAP_DMABUF: 0 */
	u64 size;
	enum disnvm_kind kind;
	/* host memory */
	unsigned long npages;		/* CPU pages */
	struct page **pages;
	struct sg_table sgt;
#ifdef DISNVM_CUDA
	/* CUDA device memory */
	struct nvidia_p2p_page_table *p2p_pages;
	struct nvidia_p2p_dma_mapping *p2p_dma;
	atomic_t p2p_state;
#endif
	/* dma-buf */
	u64 handle;
	u64 offset;			/* of the import in the dma-buf */
	struct disnvm_file *file;
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;
	struct sg_table *dsgt;		/* the attachment's mapping, NULL once revoked: under resv */
	bool live;			/* addresses handed out: under hw_lock */
	bool revoked;			/* the exporter took it back: under hw_lock */
};

static DEFINE_IDA(disnvm_ida);

static void disnvm_dev_free(struct kref *ref)
{
	struct disnvm_dev *dev = container_of(ref, struct disnvm_dev, ref);

	pci_dev_put(dev->pdev);
	kfree(dev);
}

/* VM_* flags of a vma became read-only in 6.3 (vm_flags_set()). */
static void disnvm_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

static void disnvm_vm_flags_clear(struct vm_area_struct *vma, vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_clear(vma, flags);
#else
	vma->vm_flags &= ~flags;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* controller quiesce */

static bool disnvm_wait_csts(struct disnvm_dev *dev, u32 mask, u32 val, unsigned int timeout_ms)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	u32 csts;

	for (;;) {
		csts = readl(dev->bar + NVME_REG_CSTS);
		if (csts == ~0U)
			return false;
		if ((csts & mask) == val)
			return true;
		if (time_after(jiffies, deadline))
			return false;
		usleep_range(1000, 2000);
	}
}

/*
 * Stop the controller's DMA before the memory it was given goes back to the kernel: a shutdown
 * notification first (a volatile write cache gets flushed), then CC.EN = 0 and CSTS.RDY = 0
 * within CAP.TO, as nvme_disable_ctrl() does. Bus mastering is cleared last, so even a controller
 * that ignores the reset cannot issue another DMA. The library's close() has normally done all of
 * this already; a killed process has not.
 */
static void disnvm_quiesce(struct disnvm_dev *dev)
{
	struct device *d = &dev->pdev->dev;
	u32 cap = readl(dev->bar + NVME_REG_CAP);	/* Timeout (TO): bits 31:24, 500 ms units */
	unsigned int ready_ms = (NVME_CAP_TIMEOUT(cap) + 1) * 500;
	u32 cc = readl(dev->bar + NVME_REG_CC);
	u32 csts = readl(dev->bar + NVME_REG_CSTS);

	if (cc == ~0U || csts == ~0U) {
		dev_warn(d, "registers read all ones: device not responding\n");
		goto clear_master;
	}
	if (!(cc & NVME_CC_ENABLE) && !(csts & NVME_CSTS_RDY))
		goto clear_master;

	if ((cc & NVME_CC_ENABLE) && (csts & NVME_CSTS_RDY) && !(csts & NVME_CSTS_CFS)) {
		writel((cc & ~NVME_CC_SHN_MASK) | NVME_CC_SHN_NORMAL, dev->bar + NVME_REG_CC);
		if (!disnvm_wait_csts(dev, NVME_CSTS_SHST_MASK, NVME_CSTS_SHST_CMPLT, DISNVM_SHUTDOWN_MS))
			dev_warn(d, "shutdown not complete after %u ms; disabling anyway\n",
				 DISNVM_SHUTDOWN_MS);
	}
	writel(cc & ~(NVME_CC_SHN_MASK | NVME_CC_ENABLE), dev->bar + NVME_REG_CC);
	if (!disnvm_wait_csts(dev, NVME_CSTS_RDY, 0, ready_ms))
		dev_warn(d, "CSTS.RDY still set %u ms after CC.EN = 0\n", ready_ms);

clear_master:
	pci_clear_master(dev->pdev);
}

/* disnvm_quiesce() for the release paths, serialised with move_notify and DISNVM_IOC_BUS_MASTER. */
static void disnvm_stop(struct disnvm_dev *dev)
{
	mutex_lock(&dev->hw_lock);
	disnvm_quiesce(dev);
	mutex_unlock(&dev->hw_lock);
}

/* ------------------------------------------------------------------------------------------ */
/* who may hold the controller */

/*
 * The domain the DMA API maps through for the controller when it translates (DMA, or DMA-FQ with
 * deferred IOTLB invalidation), else NULL: no IOMMU, or an identity (passthrough) domain in which
 * every bus address is a physical one.
 */
static struct iommu_domain *disnvm_dma_domain(struct disnvm_dev *dev)
{
	struct iommu_domain *domain = iommu_get_domain_for_dev(&dev->pdev->dev);

	return domain && iommu_is_dma_domain(domain) ? domain : NULL;
}

struct disnvm_group_walk {
	struct device *self;
	unsigned int others;
};

static int disnvm_count_other(struct device *d, void *data)
{
	struct disnvm_group_walk *w = data;

	if (d != w->self)
		w->others++;
	return 0;
}

/*
 * Whether the controller's DMA is confined to what this module maps for it: an IOMMU translates
 * for it, and it is alone in its IOMMU group. The group is the IOMMU's unit of isolation: its
 * members share one domain (so the controller could reach whatever the kernel maps for another
 * member's driver) and may reach each other peer to peer without passing the IOMMU at all. VFIO
 * also accepts members that are unbound or bound to VFIO, because it moves the whole group into a
 * domain of its own; this module uses the kernel's default domain, into which a member bound to a
 * driver later would map its own DMA, so only a group of one is safe.
 */
static bool disnvm_isolated(struct disnvm_dev *dev)
{
	struct disnvm_group_walk w = { .self = &dev->pdev->dev };
	struct iommu_group *group;

	if (!disnvm_dma_domain(dev))
		return false;
	group = iommu_group_get(&dev->pdev->dev);
	if (!group)
		return false;
	iommu_group_for_each_dev(group, &w, disnvm_count_other);
	iommu_group_put(group);
	return w.others == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* host memory */

/*
 * Userspace DMA needs the controller to reach the process's own pages, coherently. Refuse
 * (EXDEV) what the DMA API would bounce through swiotlb, as it does for every mapping under
 * swiotlb=force and in SEV/TDX guests (whose private memory a device cannot read): the controller
 * would then read and write kernel bounce buffers the process never sees. Refuse non-coherent DMA
 * too: it needs a cache sync around every transfer, which a driver in userspace cannot do. This
 * runs before anything is pinned, so a refused mapping costs nothing and fills no bounce buffer.
 */
static int disnvm_check_direct(struct disnvm_dev *dev, bool translated)
{
	struct device *d = &dev->pdev->dev;

	if (!dev_is_dma_coherent(d)) {
		dev_warn_once(d, "DMA is not cache-coherent: refusing userspace DMA mappings\n");
		return -EXDEV;
	}
	/* Through an IOMMU swiotlb is used only for untrusted devices' sub-page buffers. */
	if (!translated && is_swiotlb_force_bounce(d)) {
		dev_warn_once(d, "swiotlb bounces all DMA (swiotlb=force, or an encrypted-memory guest): refusing userspace DMA mappings\n");
		return -EXDEV;
	}
	return 0;
}

/*
 * With only a 32-bit DMA mask and no IOMMU translating for the device, memory above the mask would
 * be bounced through swiotlb: the controller would then read and write a kernel bounce buffer the
 * process never sees. Refuse such pages instead.
 */
static int disnvm_check_reach(struct disnvm_dev *dev, struct disnvm_mapping *m, bool translated)
{
	struct device *d = &dev->pdev->dev;
	u64 mask = dma_get_mask(d);
	unsigned long i;

	if (mask == DMA_BIT_MASK(64) || translated)
		return 0;
	for (i = 0; i < m->npages; i++) {
		phys_addr_t pa = page_to_phys(m->pages[i]);

		if (pa + PAGE_SIZE - 1 > mask) {
			dev_warn_ratelimited(d, "memory at physical %pa is beyond the 32-bit DMA mask\n",
					     &pa);
			return -EXDEV;
		}
	}
	return 0;
}

/*
 * After the mapping: the bus addresses must lead to the pinned pages themselves, whatever the DMA
 * API decided per address (a bounce it chose that disnvm_check_direct() could not foresee). Without
 * an IOMMU, dma_need_sync() says whether an address is a swiotlb buffer or needs syncs. Through an
 * IOMMU dma_need_sync() is no help (6.1 answers true for every IOMMU mapping), so each IOVA is
 * looked up in the domain instead.
 */
static int disnvm_check_mapped(struct disnvm_dev *dev, struct disnvm_mapping *m,
			       struct iommu_domain *domain, const u64 *addrs)
{
	struct device *d = &dev->pdev->dev;
	struct scatterlist *sg;
	unsigned long i, j;
	unsigned int k;

	if (!domain) {
		for_each_sgtable_dma_sg(&m->sgt, sg, k) {
			if (dma_need_sync(d, sg_dma_address(sg)))
				goto bounced;
		}
		return 0;
	}
	for (i = 0; i < m->npages; i++) {
		for (j = 0; j < DISNVM_SUBPAGES; j++) {
			phys_addr_t want = page_to_phys(m->pages[i]) + j * DISNVM_PAGE_SIZE;

			if (iommu_iova_to_phys(domain, addrs[i * DISNVM_SUBPAGES + j]) != want)
				goto bounced;
		}
	}
	return 0;

bounced:
	dev_warn_once(d, "the DMA API bounces or syncs this controller's DMA: refusing userspace DMA mappings\n");
	return -EXDEV;
}

/* One bus address per 4 KiB of the mapping, out of its DMA segments. */
static int disnvm_sgt_addrs(struct disnvm_mapping *m, u64 *addrs)
{
	u64 n = m->size / DISNVM_PAGE_SIZE, i = 0;
	struct scatterlist *sg;
	unsigned int k, len;
	dma_addr_t a;

	for_each_sgtable_dma_sg(&m->sgt, sg, k) {
		a = sg_dma_address(sg);
		len = sg_dma_len(sg);
		if (!IS_ALIGNED(a, DISNVM_PAGE_SIZE) || !IS_ALIGNED(len, DISNVM_PAGE_SIZE))
			return -EIO;
		for (; len; len -= DISNVM_PAGE_SIZE, a += DISNVM_PAGE_SIZE) {
			/* Address 0 is what the C original handed out for pages it failed to pin. */
			if (i == n || !a)
				return -EIO;
			addrs[i++] = a;
		}
	}
	return i == n ? 0 : -EIO;
}

/*
 * After a DMA unmap (ours, or an exporter's of an imported dma-buf), make sure the controller can
 * no longer reach the memory once the caller returns. A lazy domain (DMA-FQ) clears the page table
 * entries at once but invalidates the IOTLB only when its flush queue runs, some milliseconds
 * later: until then the controller can still reach the pages through a cached translation, so
 * flush before the pages are unpinned and go back to the process (or the exporter), which may hand
 * them to anything. A strict domain (DMA) flushed inside the unmap already. Without an IOMMU
 * nothing stops the controller; only a CAP_SYS_RAWIO holder gets that far (disnvm_open()), and it
 * is trusted to have stopped the controller's use of them, as the uapi says.
 */
static void disnvm_flush_lazy(struct disnvm_dev *dev)
{
	struct iommu_domain *domain = disnvm_dma_domain(dev);

	if (domain && domain->type == IOMMU_DOMAIN_DMA_FQ)
		iommu_flush_iotlb_all(domain);
}

static void disnvm_dma_unmap(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
	dma_unmap_sgtable(&dev->pdev->dev, &m->sgt, DMA_BIDIRECTIONAL, 0);
	disnvm_flush_lazy(dev);
}

static int disnvm_map_pages(struct disnvm_dev *dev, struct disnvm_mapping *m, u64 *addrs)
{
	struct device *d = &dev->pdev->dev;
	struct iommu_domain *domain = disnvm_dma_domain(dev);
	unsigned long done = 0;
	int ret;

	ret = disnvm_check_direct(dev, domain != NULL);
	if (ret)
		return ret;
	m->pages = kvmalloc_array(m->npages, sizeof(*m->pages), GFP_KERNEL);
	if (!m->pages)
		return -ENOMEM;

	/*
	 * FOLL_LONGTERM: the pages stay with the controller for as long as the process wants, so they
	 * must not sit in ZONE_MOVABLE or CMA. pin_user_pages_fast() may pin fewer pages than asked;
	 * carry on from there, and when it pins none give back everything pinned so far: the caller
	 * gets a complete list or an error, never a short list.
	 */
	while (done < m->npages) {
		ret = pin_user_pages_fast(m->vaddr + (done << PAGE_SHIFT), m->npages - done,
					  FOLL_WRITE | FOLL_LONGTERM, m->pages + done);
		if (ret <= 0) {
			ret = ret ? ret : -EFAULT;
			goto unpin;
		}
		done += ret;
	}

	ret = disnvm_check_reach(dev, m, domain != NULL);
	if (ret)
		goto unpin;
	ret = sg_alloc_table_from_pages(&m->sgt, m->pages, m->npages, 0, m->size, GFP_KERNEL);
	if (ret)
		goto unpin;
	ret = dma_map_sgtable(d, &m->sgt, DMA_BIDIRECTIONAL, 0);
	if (ret)
		goto free_table;
	ret = disnvm_sgt_addrs(m, addrs);
	if (ret) {
		dev_warn_ratelimited(d, "DMA mapping of %llu bytes gave an unusable address list\n",
				     m->size);
		goto unmap;
	}
	ret = disnvm_check_mapped(dev, m, domain, addrs);
	if (ret)
		goto unmap;
	return 0;

unmap:
	disnvm_dma_unmap(dev, m);
free_table:
	sg_free_table(&m->sgt);
unpin:
	unpin_user_pages(m->pages, done);
	kvfree(m->pages);
	m->pages = NULL;
	return ret;
}

static void disnvm_unmap_pages(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
	disnvm_dma_unmap(dev, m);
	sg_free_table(&m->sgt);
	/* The controller may have written to any of them. */
	unpin_user_pages_dirty_lock(m->pages, m->npages, true);
	kvfree(m->pages);
	m->pages = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* CUDA device memory (compiled only with the NVIDIA driver's nv-p2p.h; see Kbuild) */

#ifdef DISNVM_CUDA
/*
 * The NVIDIA driver calls this when the GPU memory goes away under a live mapping (cudaFree, or
 * the CUDA context died). It may not call back into nvidia_p2p_put_pages(); it only frees the
 * tables. Whoever moves the state away from LIVE first releases the pages.
 */
static void disnvm_p2p_free_callback(void *data)
{
	struct disnvm_mapping *m = data;

	if (atomic_cmpxchg(&m->p2p_state, DISNVM_P2P_LIVE, DISNVM_P2P_REVOKED) != DISNVM_P2P_LIVE)
		return;
	nvidia_p2p_free_dma_mapping(m->p2p_dma);
	nvidia_p2p_free_page_table(m->p2p_pages);
}

static u64 disnvm_p2p_page_size(u32 type)
{
	switch (type) {
	case NVIDIA_P2P_PAGE_SIZE_4KB:
		return SZ_4K;
	case NVIDIA_P2P_PAGE_SIZE_64KB:
		return SZ_64K;
	case NVIDIA_P2P_PAGE_SIZE_128KB:
		return SZ_128K;
	default:
		return 0;
	}
}

static int disnvm_map_gpu(struct disnvm_dev *dev, struct disnvm_mapping *m, u64 *addrs)
{
	u64 page, n = 0, i, j;
	int ret;

	atomic_set(&m->p2p_state, DISNVM_P2P_LIVE);
	ret = nvidia_p2p_get_pages(0, 0, m->vaddr, m->size, &m->p2p_pages,
				   disnvm_p2p_free_callback, m);
	if (ret)
		return ret;
	if (!NVIDIA_P2P_PAGE_TABLE_VERSION_COMPATIBLE(m->p2p_pages)) {
		ret = -EOPNOTSUPP;
		goto put;
	}
	ret = nvidia_p2p_dma_map_pages(dev->pdev, m->p2p_pages, &m->p2p_dma);
	if (ret)
		goto put;
	if (!NVIDIA_P2P_DMA_MAPPING_VERSION_COMPATIBLE(m->p2p_dma)) {
		ret = -EOPNOTSUPP;
		goto unmap;
	}
	page = disnvm_p2p_page_size(m->p2p_dma->page_size_type);
	if (!page || m->p2p_dma->entries * page != m->size) {
		ret = -EIO;
		goto unmap;
	}
	for (i = 0; i < m->p2p_dma->entries; i++) {
		for (j = 0; j < page; j += DISNVM_PAGE_SIZE) {
			addrs[n] = m->p2p_dma->dma_addresses[i] + j;
			if (!addrs[n++]) {
				ret = -EIO;
				goto unmap;
			}
		}
	}
	return 0;

unmap:
	nvidia_p2p_dma_unmap_pages(dev->pdev, m->p2p_pages, m->p2p_dma);
put:
	if (atomic_cmpxchg(&m->p2p_state, DISNVM_P2P_LIVE, DISNVM_P2P_RELEASING) == DISNVM_P2P_LIVE)
		nvidia_p2p_put_pages(0, 0, m->vaddr, m->p2p_pages);
	return ret;
}

static void disnvm_unmap_gpu(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
	if (atomic_cmpxchg(&m->p2p_state, DISNVM_P2P_LIVE, DISNVM_P2P_RELEASING) != DISNVM_P2P_LIVE)
		return;	/* the free callback released it */
	nvidia_p2p_dma_unmap_pages(dev->pdev, m->p2p_pages, m->p2p_dma);
	nvidia_p2p_put_pages(0, 0, m->vaddr, m->p2p_pages);
}
#endif /* DISNVM_CUDA */

/* ------------------------------------------------------------------------------------------ */
/* imported dma-bufs */

#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)
/*
 * The exporter takes the buffer back (dma_buf_move_notify(): it moves or frees the memory once
 * every importer returned from here). It calls this with the buffer's reservation lock held, so
 * dev->lock cannot be taken (see the locking rule at the top). The controller may hold the old
 * addresses in any queue: stop it (CC.SHN, CC.EN = 0, bus mastering cleared) before returning,
 * count the import as revoked so that bus mastering stays off until the process has unmapped it
 * (disnvm_ioctl_bus_master()), then give the exporter its mapping back. Nothing is stopped for an
 * import whose addresses were never handed out: the ioctl importing it fails with EAGAIN instead.
 */
static void disnvm_move_notify(struct dma_buf_attachment *attach)
{
	struct disnvm_mapping *m = attach->importer_priv;
	struct disnvm_file *f = m->file;
	struct disnvm_dev *dev = f->dev;

	dma_resv_assert_held(attach->dmabuf->resv);
	mutex_lock(&dev->hw_lock);
	if (!m->revoked) {
		m->revoked = true;
		if (m->live) {
			disnvm_quiesce(dev);
			f->revoked++;
			dev_warn(&dev->pdev->dev,
				 "the exporter (%s) revoked dma-buf import %llu: controller disabled, bus mastering off until it is unmapped\n",
				 attach->dmabuf->exp_name, m->handle);
		}
	}
	mutex_unlock(&dev->hw_lock);
	if (m->dsgt) {
		dma_buf_unmap_attachment(attach, m->dsgt, DMA_BIDIRECTIONAL);
		m->dsgt = NULL;
		disnvm_flush_lazy(dev);
	}
}

static const struct dma_buf_attach_ops disnvm_importer_ops = {
	/* A GPU's memory is a PCI BAR: the controller reaches it peer to peer. */
	.allow_peer2peer = true,
	.move_notify = disnvm_move_notify,
};

/*
 * One bus address per 4 KiB of [offset, offset + size) of the buffer, out of the segments the
 * exporter mapped for the controller. Every segment up to the end of the import must be 4 KiB
 * aligned in address and length, or the list would not describe the buffer page by page.
 */
static int disnvm_dmabuf_addrs(struct disnvm_mapping *m, u64 *addrs)
{
	u64 n = m->size / DISNVM_PAGE_SIZE, i = 0, pos = 0, end = m->offset + m->size;
	struct scatterlist *sg;
	unsigned int k;
	dma_addr_t a;
	u64 len;

	for_each_sgtable_dma_sg(m->dsgt, sg, k) {
		if (pos >= end)
			break;
		a = sg_dma_address(sg);
		len = sg_dma_len(sg);
		if (!IS_ALIGNED(a, DISNVM_PAGE_SIZE) || !IS_ALIGNED(len, DISNVM_PAGE_SIZE))
			return -EIO;
		for (; len && pos < end; len -= DISNVM_PAGE_SIZE, a += DISNVM_PAGE_SIZE,
		     pos += DISNVM_PAGE_SIZE) {
			if (pos < m->offset)
				continue;
			if (i == n || !a)
				return -EIO;
			addrs[i++] = a;
		}
	}
	return i == n ? 0 : -EIO;
}

/*
 * The exporter made the addresses; check they lead where the controller can go directly. Without
 * an IOMMU nothing may need a sync (a swiotlb bounce buffer the exporter never sees). Through an
 * IOMMU every page must be mapped in the controller's own domain: an exporter that mapped for
 * another device (or ignored the importer) would otherwise make the controller fault, or worse.
 */
static int disnvm_check_dmabuf(struct disnvm_dev *dev, struct disnvm_mapping *m,
			       struct iommu_domain *domain, const u64 *addrs)
{
	struct device *d = &dev->pdev->dev;
	struct scatterlist *sg;
	unsigned int k;
	u64 i;

	if (!domain) {
		for_each_sgtable_dma_sg(m->dsgt, sg, k) {
			if (dma_need_sync(d, sg_dma_address(sg)))
				goto refuse;
		}
		return 0;
	}
	for (i = 0; i < m->size / DISNVM_PAGE_SIZE; i++) {
		if (!iommu_iova_to_phys(domain, addrs[i]))
			goto refuse;
	}
	return 0;

refuse:
	dev_warn_once(d,
		      "dma-buf of %s: its mapping for this controller is bounced or not in its IOMMU domain: refusing it\n",
		      m->dmabuf->exp_name);
	return -EXDEV;
}

/* Undo disnvm_attach_dmabuf(): the exporter gets its mapping back, then the attachment goes. */
static void disnvm_unmap_dmabuf(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
	struct dma_buf *dmabuf = m->dmabuf;

	dma_resv_lock(dmabuf->resv, NULL);
	if (m->dsgt) {
		dma_buf_unmap_attachment(m->attach, m->dsgt, DMA_BIDIRECTIONAL);
		m->dsgt = NULL;
	}
	dma_buf_unpin(m->attach);
	dma_resv_unlock(dmabuf->resv);
	/*
	 * The core keeps the mapping of an exporter that cannot move its memory (udmabuf) for as long
	 * as the attachment lives: it goes only here. Then the lazy IOTLB, as for host memory.
	 */
	dma_buf_detach(dmabuf, m->attach);
	m->attach = NULL;
	disnvm_flush_lazy(dev);
}

/*
 * Attach m->dmabuf to the controller, pin it with its exporter (the controller cannot wait for it
 * to move back), map it and describe [m->offset, + m->size) in addrs. Called with dev->lock held.
 */
static int disnvm_attach_dmabuf(struct disnvm_dev *dev, struct disnvm_mapping *m, u64 *addrs)
{
	struct iommu_domain *domain = disnvm_dma_domain(dev);
	struct dma_buf *dmabuf = m->dmabuf;
	struct sg_table *sgt;
	int ret;

	ret = disnvm_check_direct(dev, domain != NULL);
	if (ret)
		return ret;
	m->attach = dma_buf_dynamic_attach(dmabuf, &dev->pdev->dev, &disnvm_importer_ops, m);
	if (IS_ERR(m->attach)) {
		ret = PTR_ERR(m->attach);
		m->attach = NULL;
		return ret;
	}
	dma_resv_lock(dmabuf->resv, NULL);
	ret = dma_buf_pin(m->attach);
	if (!ret) {
		sgt = dma_buf_map_attachment(m->attach, DMA_BIDIRECTIONAL);
		if (IS_ERR(sgt)) {
			ret = PTR_ERR(sgt);
			dma_buf_unpin(m->attach);
		} else {
			m->dsgt = sgt;
		}
	}
	dma_resv_unlock(dmabuf->resv);
	if (ret) {
		dma_buf_detach(dmabuf, m->attach);
		m->attach = NULL;
		return ret;
	}
	ret = disnvm_dmabuf_addrs(m, addrs);
	if (ret) {
		dev_warn_ratelimited(&dev->pdev->dev,
				     "dma-buf of %s: its mapping cannot be described in 4 KiB pages\n",
				     dmabuf->exp_name);
		goto unmap;
	}
	ret = disnvm_check_dmabuf(dev, m, domain, addrs);
	if (ret)
		goto unmap;
	/* From here a revocation must stop the controller: the addresses go to the process. */
	mutex_lock(&dev->hw_lock);
	if (m->revoked)
		ret = -EAGAIN;
	else
		m->live = true;
	mutex_unlock(&dev->hw_lock);
	if (ret)
		goto unmap;
	return 0;

unmap:
	disnvm_unmap_dmabuf(dev, m);
	return ret;
}

/* An import goes for good: unmapped and detached, then the reference dma_buf_get() took. */
static void disnvm_release_dmabuf(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
	disnvm_unmap_dmabuf(dev, m);
	dma_buf_put(m->dmabuf);
}
#else
static void disnvm_release_dmabuf(struct disnvm_dev *dev, struct disnvm_mapping *m)
{
}
#endif /* CONFIG_DMA_SHARED_BUFFER */

/* ------------------------------------------------------------------------------------------ */
/* mappings of a file */

static u64 disnvm_mapping_4k(const struct disnvm_mapping *m)
{
	return m->size / DISNVM_PAGE_SIZE;
}

/*
 * Give one mapping back and forget it. Called with dev->lock held. Returns the CPU pages it had
 * charged to f->mm's locked_vm, for the caller to uncharge (disnvm_uncharge()).
 */
static unsigned long disnvm_release_mapping(struct disnvm_file *f, struct disnvm_mapping *m)
{
	struct disnvm_dev *dev = f->dev;
	unsigned long charged = m->kind == DISNVM_HOST ? m->npages : 0;

	list_del(&m->list);
	switch (m->kind) {
	case DISNVM_HOST:
		disnvm_unmap_pages(dev, m);
		break;
	case DISNVM_GPU:
#ifdef DISNVM_CUDA
		disnvm_unmap_gpu(dev, m);
#endif
		break;
	case DISNVM_DMABUF:
		disnvm_release_dmabuf(dev, m);
		mutex_lock(&dev->hw_lock);
		if (m->revoked && m->live)
			f->revoked--;
		mutex_unlock(&dev->hw_lock);
		f->ndmabufs--;
		f->dmabuf_pages -= disnvm_mapping_4k(m);
		atomic64_dec(&dev->dmabufs);
		break;
	}
	if (m->kind != DISNVM_DMABUF) {
		f->pinned -= disnvm_mapping_4k(m);
		atomic64_sub(disnvm_mapping_4k(m), &dev->pinned);
	}
	f->nmappings--;
	kfree(m);
	return charged;
}

static unsigned long disnvm_release_all(struct disnvm_file *f)
{
	struct disnvm_mapping *m, *tmp;
	unsigned long charged = 0;

	list_for_each_entry_safe(m, tmp, &f->mappings, list)
		charged += disnvm_release_mapping(f, m);
	return charged;
}

/*
 * Give back what a released file had charged to its opener's locked_vm, from wherever it is
 * released. The opener may be gone: a process's files are closed on exit after its address space
 * was torn down, and then there is nothing left to uncharge (VFIO's type1 driver does the same).
 */
static void disnvm_uncharge(struct disnvm_file *f, unsigned long pages)
{
	if (!pages || !mmget_not_zero(f->mm))
		return;
	account_locked_vm(f->mm, pages, false);
	mmput(f->mm);
}

static bool disnvm_overlaps(struct disnvm_file *f, u64 start, u64 end)
{
	struct disnvm_mapping *m;

	list_for_each_entry(m, &f->mappings, list)
		if (m->kind != DISNVM_DMABUF && start < m->vaddr + m->size && m->vaddr < end)
			return true;
	return false;
}

/* The import `handle` of f, or NULL. Called with dev->lock held. */
static struct disnvm_mapping *disnvm_find_dmabuf(struct disnvm_file *f, u64 handle)
{
	struct disnvm_mapping *m;

	list_for_each_entry(m, &f->mappings, list)
		if (m->kind == DISNVM_DMABUF && m->handle == handle)
			return m;
	return NULL;
}

static long disnvm_ioctl_map(struct file *file, struct disnvm_map __user *uarg, bool gpu)
{
	struct disnvm_file *f = file->private_data;
	struct disnvm_dev *dev = f->dev;
	u64 align = gpu ? DISNVM_GPU_PAGE_SIZE : max_t(u64, PAGE_SIZE, DISNVM_PAGE_SIZE);
	struct disnvm_mapping *m = NULL;
	struct disnvm_map req;
	u64 *addrs = NULL;
	u64 n;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags || !req.size || !IS_ALIGNED(req.vaddr, align) || !IS_ALIGNED(req.size, align))
		return -EINVAL;
	if (req.size > DISNVM_MAX_MAP_SIZE)
		return -E2BIG;
	if (req.vaddr + req.size < req.vaddr)
		return -EINVAL;
	if (!gpu && !access_ok(u64_to_user_ptr(req.vaddr), req.size))
		return -EFAULT;
	n = req.size / DISNVM_PAGE_SIZE;
	if (!req.addrs || !access_ok(u64_to_user_ptr(req.addrs), n * sizeof(u64)))
		return -EFAULT;
	if (current->mm != f->mm)
		return -EPERM;
	/* An unbound device has no IOMMU group left to judge: say so rather than EPERM. */
	if (READ_ONCE(dev->gone))
		return -ENODEV;
	/*
	 * Checked again here, against the credentials the file was opened with: the IOMMU group may
	 * have gained a member since open().
	 */
	if (!disnvm_isolated(dev) && !file_ns_capable(file, &init_user_ns, CAP_SYS_RAWIO))
		return -EPERM;

	addrs = kvmalloc_array(n, sizeof(u64), GFP_KERNEL);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!addrs || !m) {
		ret = -ENOMEM;
		goto out;
	}
	m->vaddr = req.vaddr;
	m->size = req.size;
	m->kind = gpu ? DISNVM_GPU : DISNVM_HOST;

	mutex_lock(&dev->lock);
	if (dev->gone) {
		ret = -ENODEV;
		goto unlock;
	}
	if (disnvm_overlaps(f, req.vaddr, req.vaddr + req.size)) {
		ret = -EEXIST;
		goto unlock;
	}
#ifdef DISNVM_CUDA
	if (gpu) {
		ret = disnvm_map_gpu(dev, m, addrs);
	} else
#endif
	{
		/*
		 * Charged before pinning, to the opener's RLIMIT_MEMLOCK unless it has CAP_IPC_LOCK
		 * (ENOMEM over the limit), so a refused request pins nothing.
		 */
		m->npages = m->size >> PAGE_SHIFT;
		ret = account_locked_vm(f->mm, m->npages, true);
		if (ret)
			goto unlock;
		ret = disnvm_map_pages(dev, m, addrs);
		if (ret)
			account_locked_vm(f->mm, m->npages, false);
	}
	if (ret)
		goto unlock;

	list_add_tail(&m->list, &f->mappings);
	f->pinned += n;
	f->nmappings++;
	atomic64_add(n, &dev->pinned);
	if (copy_to_user(u64_to_user_ptr(req.addrs), addrs, n * sizeof(u64))) {
		/* current->mm is f->mm here: uncharged at once. */
		account_locked_vm(f->mm, disnvm_release_mapping(f, m), false);
		ret = -EFAULT;
	}
	m = NULL;	/* on the list, or released */
unlock:
	mutex_unlock(&dev->lock);
out:
	kfree(m);
	kvfree(addrs);
	return ret;
}

#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)
static long disnvm_ioctl_map_dmabuf(struct file *file, struct disnvm_map_dmabuf __user *uarg)
{
	struct disnvm_file *f = file->private_data;
	struct disnvm_dev *dev = f->dev;
	struct disnvm_mapping *m = NULL;
	struct disnvm_map_dmabuf req;
	struct dma_buf *dmabuf;
	u64 *addrs = NULL;
	u64 n;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags || !req.size || !IS_ALIGNED(req.offset, DISNVM_PAGE_SIZE) ||
	    !IS_ALIGNED(req.size, DISNVM_PAGE_SIZE))
		return -EINVAL;
	if (req.size > DISNVM_MAX_MAP_SIZE)
		return -E2BIG;
	n = req.size / DISNVM_PAGE_SIZE;
	if (!req.addrs || !access_ok(u64_to_user_ptr(req.addrs), n * sizeof(u64)))
		return -EFAULT;
	if (current->mm != f->mm)
		return -EPERM;
	if (READ_ONCE(dev->gone))
		return -ENODEV;
	/* The same rule as MAP_HOST: the addresses could point the controller anywhere otherwise. */
	if (!disnvm_isolated(dev) && !file_ns_capable(file, &init_user_ns, CAP_SYS_RAWIO))
		return -EPERM;

	/* EBADF for a closed fd, EINVAL for a file that is not a dma-buf. */
	dmabuf = dma_buf_get((int)req.fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (req.offset >= dmabuf->size || req.size > dmabuf->size - req.offset) {
		ret = -ERANGE;
		goto put;
	}
	addrs = kvmalloc_array(n, sizeof(u64), GFP_KERNEL);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!addrs || !m) {
		ret = -ENOMEM;
		goto put;
	}
	m->kind = DISNVM_DMABUF;
	m->size = req.size;
	m->offset = req.offset;
	m->file = f;
	m->dmabuf = dmabuf;

	mutex_lock(&dev->lock);
	if (dev->gone) {
		ret = -ENODEV;
		goto unlock;
	}
	ret = disnvm_attach_dmabuf(dev, m, addrs);
	if (ret)
		goto unlock;
	m->handle = ++f->next_handle;
	list_add_tail(&m->list, &f->mappings);
	f->nmappings++;
	f->ndmabufs++;
	f->dmabuf_pages += n;
	atomic64_inc(&dev->dmabufs);
	req.handle = m->handle;
	req.dmabuf_size = dmabuf->size;
	if (copy_to_user(u64_to_user_ptr(req.addrs), addrs, n * sizeof(u64)) ||
	    copy_to_user(uarg, &req, sizeof(req))) {
		disnvm_release_mapping(f, m);
		ret = -EFAULT;
	}
	m = NULL;	/* on the list (it holds the dma-buf reference), or released */
	dmabuf = NULL;
unlock:
	mutex_unlock(&dev->lock);
put:
	if (dmabuf)
		dma_buf_put(dmabuf);
	kfree(m);
	kvfree(addrs);
	return ret;
}
#else
static long disnvm_ioctl_map_dmabuf(struct file *file, struct disnvm_map_dmabuf __user *uarg)
{
	return -EOPNOTSUPP;
}
#endif

static long disnvm_ioctl_unmap(struct disnvm_file *f, struct disnvm_unmap __user *uarg)
{
	struct disnvm_dev *dev = f->dev;
	struct disnvm_unmap req;
	struct disnvm_mapping *m;
	long ret = -ENOENT;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags & ~DISNVM_UNMAP_DMABUF)
		return -EINVAL;
	if (current->mm != f->mm)
		return -EPERM;

	mutex_lock(&dev->lock);
	if (dev->gone) {
		ret = -ENODEV;
		goto unlock;
	}
	if (req.flags & DISNVM_UNMAP_DMABUF) {
		m = disnvm_find_dmabuf(f, req.vaddr);
		if (m) {
			disnvm_release_mapping(f, m);
			ret = 0;
		}
		goto unlock;
	}
	list_for_each_entry(m, &f->mappings, list) {
		if (m->kind != DISNVM_DMABUF && m->vaddr == req.vaddr) {
			account_locked_vm(f->mm, disnvm_release_mapping(f, m), false);
			ret = 0;
			break;
		}
	}
unlock:
	mutex_unlock(&dev->lock);
	return ret;
}

static long disnvm_ioctl_dmabuf_status(struct disnvm_file *f,
				       struct disnvm_dmabuf_handle __user *uarg)
{
	struct disnvm_dev *dev = f->dev;
	struct disnvm_dmabuf_handle req;
	struct disnvm_mapping *m;
	long ret = 0;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags)
		return -EINVAL;
	if (current->mm != f->mm)
		return -EPERM;

	mutex_lock(&dev->lock);
	m = dev->gone ? NULL : disnvm_find_dmabuf(f, req.handle);
	if (dev->gone) {
		ret = -ENODEV;
	} else if (!m) {
		ret = -ENOENT;
	} else {
		mutex_lock(&dev->hw_lock);
		req.flags = m->revoked ? DISNVM_DMABUF_REVOKED : 0;
		mutex_unlock(&dev->hw_lock);
	}
	mutex_unlock(&dev->lock);
	if (ret)
		return ret;
	return copy_to_user(uarg, &req, sizeof(req)) ? -EFAULT : 0;
}

/*
 * Test hook: udmabuf, the exporter a test can have without a GPU, never revokes. Run the import's
 * move_notify exactly as an exporter's dma_buf_move_notify() does: under the buffer's reservation
 * lock. Root only (CAP_SYS_ADMIN): it stops the controller.
 */
static long disnvm_ioctl_revoke_dmabuf(struct disnvm_file *f,
				       struct disnvm_dmabuf_handle __user *uarg)
{
#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)
	struct disnvm_dev *dev = f->dev;
	struct disnvm_dmabuf_handle req;
	struct disnvm_mapping *m;
	long ret = 0;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags)
		return -EINVAL;
	if (current->mm != f->mm)
		return -EPERM;

	mutex_lock(&dev->lock);
	m = dev->gone ? NULL : disnvm_find_dmabuf(f, req.handle);
	if (dev->gone) {
		ret = -ENODEV;
	} else if (!m) {
		ret = -ENOENT;
	} else {
		dma_resv_lock(m->dmabuf->resv, NULL);
		disnvm_move_notify(m->attach);
		dma_resv_unlock(m->dmabuf->resv);
	}
	mutex_unlock(&dev->lock);
	return ret;
#else
	return -EOPNOTSUPP;
#endif
}

static long disnvm_ioctl_info(struct disnvm_file *f, struct disnvm_info __user *uarg)
{
	struct disnvm_dev *dev = f->dev;
	struct pci_dev *pdev = dev->pdev;
	struct disnvm_info info = {
		.abi_version = DISNVM_ABI_VERSION,
		.bar0_size = dev->bar_len,
		.vendor = pdev->vendor,
		.device = pdev->device,
		.class_code = pdev->class,
	};

	if (IS_ENABLED(DISNVM_CUDA))
		info.flags |= DISNVM_INFO_CUDA;
	if (dma_get_mask(&pdev->dev) == DMA_BIT_MASK(64))
		info.flags |= DISNVM_INFO_DMA_64BIT;
	if (disnvm_isolated(dev))
		info.flags |= DISNVM_INFO_ISOLATED;
	if (IS_ENABLED(CONFIG_DMA_SHARED_BUFFER))
		info.flags |= DISNVM_INFO_DMABUF;
	if (PAGE_SIZE == SZ_4K)
		info.flags |= DISNVM_INFO_BAR_FD;
	mutex_lock(&dev->lock);
	info.file_bar_fds = f->nbars;
	info.pinned_pages = atomic64_read(&dev->pinned);
	info.file_pinned_pages = f->pinned;
	info.file_mappings = f->nmappings;
	info.file_dmabufs = f->ndmabufs;
	info.file_dmabuf_pages = f->dmabuf_pages;
	info.dmabufs = atomic64_read(&dev->dmabufs);
	mutex_lock(&dev->hw_lock);
	info.file_revoked = f->revoked;
	mutex_unlock(&dev->hw_lock);
	mutex_unlock(&dev->lock);

	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

/*
 * Bus Master Enable on request: the library clears it to stop a controller it could not disable
 * before it settles the memory the controller was given, and sets it again after recovering.
 */
static long disnvm_ioctl_bus_master(struct disnvm_file *f, struct disnvm_bus_master __user *uarg)
{
	struct disnvm_dev *dev = f->dev;
	struct disnvm_bus_master req;
	long ret = 0;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.enable > 1)
		return -EINVAL;
	if (current->mm != f->mm)
		return -EPERM;

	mutex_lock(&dev->lock);
	mutex_lock(&dev->hw_lock);
	if (dev->gone)
		ret = -ENODEV;
	else if (req.enable && f->revoked)
		ret = -ESTALE;	/* the controller may still hold addresses of a revoked import */
	else if (req.enable)
		pci_set_master(dev->pdev);
	else
		pci_clear_master(dev->pdev);
	mutex_unlock(&dev->hw_lock);
	mutex_unlock(&dev->lock);
	return ret;
}

static long disnvm_ioctl_bar_fd(struct file *file, unsigned long flags);

static long disnvm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct disnvm_file *f = file->private_data;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case DISNVM_IOC_MAP_HOST:
		return disnvm_ioctl_map(file, argp, false);
	case DISNVM_IOC_MAP_DEVICE:
		if (!IS_ENABLED(DISNVM_CUDA))
			return -EOPNOTSUPP;
		return disnvm_ioctl_map(file, argp, true);
	case DISNVM_IOC_UNMAP:
		return disnvm_ioctl_unmap(f, argp);
	case DISNVM_IOC_INFO:
		return disnvm_ioctl_info(f, argp);
	case DISNVM_IOC_BUS_MASTER:
		return disnvm_ioctl_bus_master(f, argp);
	case DISNVM_IOC_MAP_DMABUF:
		return disnvm_ioctl_map_dmabuf(file, argp);
	case DISNVM_IOC_DMABUF_STATUS:
		return disnvm_ioctl_dmabuf_status(f, argp);
	case DISNVM_IOC_REVOKE_DMABUF:
		return disnvm_ioctl_revoke_dmabuf(f, argp);
	case DISNVM_IOC_BAR_FD:
		return disnvm_ioctl_bar_fd(file, arg);
	default:
		return -ENOTTY;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* BAR0 mmap */

/*
 * BAR0 pages are inserted on first touch rather than all at mmap() time: the check for a removed
 * device and the insertion are then atomic with respect to disnvm_remove(), which zaps what was
 * inserted before; anything after gets SIGBUS instead of a BAR that is no longer ours.
 */
/* The BAR0 page a fault at vmf->address of a BAR0 mapping stands for. */
static unsigned long disnvm_bar_pfn(struct disnvm_dev *dev, struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;

	return (dev->bar_start >> PAGE_SHIFT) + vma->vm_pgoff +
	       ((vmf->address - vma->vm_start) >> PAGE_SHIFT);
}

/* A mapping of BAR0 must be shared and lie within it. */
static int disnvm_bar_range(struct disnvm_dev *dev, struct vm_area_struct *vma)
{
	unsigned long len = vma->vm_end - vma->vm_start;
	unsigned long pages = dev->bar_len >> PAGE_SHIFT;

	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_pgoff >= pages || len > (pages - vma->vm_pgoff) << PAGE_SHIFT)
		return -EINVAL;
	return 0;
}

static vm_fault_t disnvm_bar_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct disnvm_dev *dev = vma->vm_private_data;
	unsigned long pfn = disnvm_bar_pfn(dev, vmf);
	vm_fault_t ret;

	mutex_lock(&dev->bar_lock);
	ret = dev->gone ? VM_FAULT_SIGBUS : vmf_insert_pfn(vma, vmf->address, pfn);
	mutex_unlock(&dev->bar_lock);
	return ret;
}

static const struct vm_operations_struct disnvm_bar_vm_ops = {
	.fault = disnvm_bar_fault,
};

static int disnvm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct disnvm_file *f = file->private_data;
	struct disnvm_dev *dev = f->dev;
	int ret = disnvm_bar_range(dev, vma);

	if (ret)
		return ret;
	if (READ_ONCE(dev->gone))
		return -ENODEV;

	/* Registers: uncached; never copied into a child, grown by mremap() or dumped. */
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	disnvm_vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY);
	vma->vm_private_data = dev;
	vma->vm_ops = &disnvm_bar_vm_ops;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* BAR0 for a process the opener serves (DISNVM_IOC_BAR_FD) */

/*
 * Revoke every BAR descriptor made from f: each later touch of their pages finds its sink page,
 * and what was inserted before is zapped (their vmas hang on the node's address_space, as the
 * opener's do). Called with dev->lock held, before the controller is stopped, so no doorbell of a
 * served process can restart anything once the opener is gone.
 */
static void disnvm_revoke_bars(struct disnvm_file *f)
{
	struct disnvm_dev *dev = f->dev;
	struct disnvm_bar *b, *tmp;

	if (list_empty(&f->bars))
		return;
	mutex_lock(&dev->bar_lock);
	list_for_each_entry(b, &f->bars, list)
		b->revoked = true;
	mutex_unlock(&dev->bar_lock);
	list_for_each_entry_safe(b, tmp, &f->bars, list) {
		list_del_init(&b->list);
		b->owner = NULL;
	}
	f->nbars = 0;
	unmap_mapping_range(f->mapping, 0, 0, 1);
}

static vm_fault_t disnvm_bar_fd_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct disnvm_bar *b = vma->vm_private_data;
	struct disnvm_dev *dev = b->dev;
	unsigned long pfn;
	vm_fault_t ret;

	mutex_lock(&dev->bar_lock);
	pfn = b->revoked || dev->gone ? page_to_pfn(b->sink) : disnvm_bar_pfn(dev, vmf);
	ret = vmf_insert_pfn(vma, vmf->address, pfn);
	mutex_unlock(&dev->bar_lock);
	return ret;
}

static const struct vm_operations_struct disnvm_bar_fd_vm_ops = {
	.fault = disnvm_bar_fd_fault,
};

static int disnvm_bar_fd_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct disnvm_bar *b = file->private_data;
	int ret = disnvm_bar_range(b->dev, vma);

	if (ret)
		return ret;
	/*
	 * The register page (CC, AQA, ASQ, ACQ, ...) is the opener's to write: whoever could write
	 * it could disable the controller and move the admin queue into its own memory. Read-only
	 * here, for good (no mprotect() back to writable).
	 */
	if (vma->vm_pgoff == 0) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		disnvm_vm_flags_clear(vma, VM_MAYWRITE);
	}
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	disnvm_vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY);
	vma->vm_private_data = b;
	vma->vm_ops = &disnvm_bar_fd_vm_ops;
	return 0;
}

/* The last reference: every vma of it is gone (each held the file), so the sink page may go. */
static int disnvm_bar_fd_release(struct inode *inode, struct file *file)
{
	struct disnvm_bar *b = file->private_data;
	struct disnvm_dev *dev = b->dev;

	mutex_lock(&dev->lock);
	if (b->owner) {
		list_del(&b->list);
		b->owner->nbars--;
		b->owner = NULL;
	}
	mutex_unlock(&dev->lock);
	iput(b->inode);
	__free_page(b->sink);
	kfree(b);
	kref_put(&dev->ref, disnvm_dev_free);
	return 0;
}

static const struct file_operations disnvm_bar_fops = {
	.owner = THIS_MODULE,
	.release = disnvm_bar_fd_release,
	.mmap = disnvm_bar_fd_mmap,
};

/*
 * DISNVM_IOC_BAR_FD: a new descriptor that maps BAR0 (its register page read-only) and nothing
 * else, for the opener to pass to a process it serves. It holds neither the opener's file nor its
 * memory: the opener's release (its process dying included) revokes it first, then stops the
 * controller as always.
 */
static long disnvm_ioctl_bar_fd(struct file *file, unsigned long flags)
{
	struct disnvm_file *f = file->private_data;
	struct disnvm_dev *dev = f->dev;
	struct disnvm_bar *b;
	struct file *bf;
	long ret;
	int fd;

	if (flags)
		return -EINVAL;
	if (current->mm != f->mm)
		return -EPERM;
	/* Doorbells start at 0x1000 (NVMe Base 2.0, 3.1.4): with larger pages they share the register page. */
	if (PAGE_SIZE != SZ_4K)
		return -EOPNOTSUPP;
	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	INIT_LIST_HEAD(&b->list);
	b->sink = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!b->sink) {
		ret = -ENOMEM;
		goto free;
	}
	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto free_page;
	}
	mutex_lock(&dev->lock);
	if (dev->gone) {
		ret = -ENODEV;
		goto unlock;
	}
	bf = anon_inode_getfile("[disnvm-bar]", &disnvm_bar_fops, b, O_RDWR | O_CLOEXEC);
	if (IS_ERR(bf)) {
		ret = PTR_ERR(bf);
		goto unlock;
	}
	/* Its vmas on the node's address_space: unmap_mapping_range(f->mapping) reaches them. */
	bf->f_mapping = file->f_mapping;
	b->inode = file_inode(file);
	ihold(b->inode);
	b->dev = dev;
	kref_get(&dev->ref);
	b->owner = f;
	list_add_tail(&b->list, &f->bars);
	f->nbars++;
	mutex_unlock(&dev->lock);
	fd_install(fd, bf);
	return fd;

unlock:
	mutex_unlock(&dev->lock);
	put_unused_fd(fd);
free_page:
	__free_page(b->sink);
free:
	kfree(b);
	return ret;
}

/* ------------------------------------------------------------------------------------------ */
/* open and release */

static int disnvm_open(struct inode *inode, struct file *file)
{
	/* misc_open() leaves the miscdevice here, and holds misc_mtx: remove cannot run meanwhile. */
	struct disnvm_dev *dev = container_of(file->private_data, struct disnvm_dev, misc);
	struct disnvm_file *f;
	int ret = 0;

	if (!current->mm)
		return -EINVAL;
	/*
	 * The holder points the controller's DMA wherever it likes. Unless an IOMMU confines that to
	 * what this module maps, it could read and write any memory: then only for CAP_SYS_RAWIO, as
	 * /dev/mem. Checked at open, like /dev/mem, and again at every map (disnvm_ioctl_map()).
	 */
	if (!disnvm_isolated(dev) && !capable(CAP_SYS_RAWIO)) {
		dev_info_ratelimited(&dev->pdev->dev,
				     "%s[%d] may not open /dev/%s: no IOMMU isolates the controller and it lacks CAP_SYS_RAWIO\n",
				     current->comm, task_pid_nr(current), dev->name);
		return -EPERM;
	}
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	f->dev = dev;
	f->mapping = file->f_mapping;
	INIT_LIST_HEAD(&f->mappings);
	INIT_LIST_HEAD(&f->bars);

	mutex_lock(&dev->lock);
	if (dev->gone)
		ret = -ENODEV;
	else if (dev->file)
		ret = -EBUSY;	/* one owner at a time: see module/README.md */
	if (ret) {
		mutex_unlock(&dev->lock);
		kfree(f);
		return ret;
	}
	dev->file = f;
	kref_get(&dev->ref);
	pci_set_master(dev->pdev);
	mutex_unlock(&dev->lock);

	f->mm = current->mm;
	mmgrab(f->mm);
	file->private_data = f;
	return nonseekable_open(inode, file);
}

/* Runs when the last reference is gone: close() and munmap() of BAR0, or the owner's death. */
static int disnvm_release(struct inode *inode, struct file *file)
{
	struct disnvm_file *f = file->private_data;
	struct disnvm_dev *dev = f->dev;
	unsigned long charged = 0;

	mutex_lock(&dev->lock);
	/* The processes it served lose the BAR first: none of their doorbells follows the stop. */
	disnvm_revoke_bars(f);
	if (!dev->gone) {
		/*
		 * The controller first: nothing may DMA into pages once they are unpinned, nor into
		 * a dma-buf once its exporter has it back.
		 */
		disnvm_stop(dev);
		charged = disnvm_release_all(f);
	}
	dev->file = NULL;
	mutex_unlock(&dev->lock);

	disnvm_uncharge(f, charged);
	mmdrop(f->mm);
	kfree(f);
	kref_put(&dev->ref, disnvm_dev_free);
	return 0;
}

static const struct file_operations disnvm_fops = {
	.owner = THIS_MODULE,
	.open = disnvm_open,
	.release = disnvm_release,
	.unlocked_ioctl = disnvm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = disnvm_mmap,
};

/* ------------------------------------------------------------------------------------------ */
/* sysfs: /sys/bus/pci/devices/<bdf>/disnvm_pinned_pages, disnvm_dmabufs */

static ssize_t disnvm_pinned_pages_show(struct device *d, struct device_attribute *attr, char *buf)
{
	struct disnvm_dev *dev = pci_get_drvdata(to_pci_dev(d));

	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&dev->pinned));
}
static DEVICE_ATTR_RO(disnvm_pinned_pages);

static ssize_t disnvm_dmabufs_show(struct device *d, struct device_attribute *attr, char *buf)
{
	struct disnvm_dev *dev = pci_get_drvdata(to_pci_dev(d));

	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&dev->dmabufs));
}
static DEVICE_ATTR_RO(disnvm_dmabufs);

static struct attribute *disnvm_attrs[] = {
	&dev_attr_disnvm_pinned_pages.attr,
	&dev_attr_disnvm_dmabufs.attr,
	NULL,
};
ATTRIBUTE_GROUPS(disnvm);

/* ------------------------------------------------------------------------------------------ */
/* PCI driver */

static void __iomem *disnvm_map_bar0(struct pci_dev *pdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	return pcim_iomap_region(pdev, 0, DISNVM_NAME);
#else
	int ret = pcim_iomap_regions(pdev, BIT(0), DISNVM_NAME);

	if (ret)
		return IOMEM_ERR_PTR(ret);
	return pcim_iomap_table(pdev)[0];
#endif
}

static int disnvm_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct disnvm_dev *dev;
	int ret;

	if (pdev->class != PCI_CLASS_STORAGE_EXPRESS) {
		dev_info(&pdev->dev, "class %06x is not an NVMe controller (%06x); not binding\n",
			 pdev->class, PCI_CLASS_STORAGE_EXPRESS);
		return -ENODEV;
	}
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < max_t(resource_size_t, DISNVM_BAR0_MIN, PAGE_SIZE) ||
	    !PAGE_ALIGNED(pci_resource_start(pdev, 0))) {
		dev_err(&pdev->dev, "BAR0 %pR is not a usable NVMe register BAR\n", &pdev->resource[0]);
		return -ENODEV;
	}

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	kref_init(&dev->ref);
	mutex_init(&dev->lock);
	mutex_init(&dev->bar_lock);
	mutex_init(&dev->hw_lock);
	atomic64_set(&dev->pinned, 0);
	atomic64_set(&dev->dmabufs, 0);
	dev->pdev = pci_dev_get(pdev);

	ret = pcim_enable_device(pdev);
	if (ret)
		goto put;
	dev->bar = disnvm_map_bar0(pdev);
	if (IS_ERR(dev->bar)) {
		ret = PTR_ERR(dev->bar);
		dev_err(&pdev->dev, "cannot map BAR0: %d\n", ret);
		goto put;
	}
	dev->bar_start = pci_resource_start(pdev, 0);
	dev->bar_len = pci_resource_len(pdev, 0);

	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(32));
		if (ret) {
			dev_err(&pdev->dev, "no usable DMA mask\n");
			goto put;
		}
		dev_warn(&pdev->dev, "32-bit DMA only: memory above 4 GiB is refused without an IOMMU\n");
	}

	ret = ida_alloc(&disnvm_ida, GFP_KERNEL);
	if (ret < 0)
		goto put;
	dev->id = ret;
	snprintf(dev->name, sizeof(dev->name), DISNVM_NAME "%d", dev->id);
	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &disnvm_fops;
	dev->misc.parent = &pdev->dev;
	dev->misc.mode = 0600;

	pci_set_drvdata(pdev, dev);
	ret = misc_register(&dev->misc);
	if (ret)
		goto free_id;

	dev_info(&pdev->dev, "/dev/%s: BAR0 %pR, %d-bit DMA\n", dev->name, &pdev->resource[0],
		 dma_get_mask(&pdev->dev) == DMA_BIT_MASK(64) ? 64 : 32);
	return 0;

free_id:
	pci_set_drvdata(pdev, NULL);
	ida_free(&disnvm_ida, dev->id);
put:
	kref_put(&dev->ref, disnvm_dev_free);
	return ret;
}

static void disnvm_remove(struct pci_dev *pdev)
{
	struct disnvm_dev *dev = pci_get_drvdata(pdev);
	struct disnvm_file *f;

	misc_deregister(&dev->misc);	/* no new opens */

	mutex_lock(&dev->lock);
	mutex_lock(&dev->bar_lock);
	dev->gone = true;
	mutex_unlock(&dev->bar_lock);
	f = dev->file;
	if (f) {
		/* Still open: the user's BAR0 mappings go (SIGBUS on the next access), then its DMA. */
		dev_warn(&pdev->dev, "unbound while /dev/%s is open; revoking its mappings\n", dev->name);
		disnvm_revoke_bars(f);
		unmap_mapping_range(f->mapping, 0, 0, 1);
		disnvm_stop(dev);
		/* Under the lock: once it is dropped, the file's release may free f. */
		disnvm_uncharge(f, disnvm_release_all(f));
	}
	mutex_unlock(&dev->lock);

	ida_free(&disnvm_ida, dev->id);
	pci_set_drvdata(pdev, NULL);
	kref_put(&dev->ref, disnvm_dev_free);
}

/*
 * No ID table: loading the module binds nothing. Bind with
 *   echo disnvm > /sys/bus/pci/devices/<bdf>/driver_override
 *   echo <bdf> > /sys/bus/pci/drivers_probe
 * or new_id; probe refuses anything that is not an NVMe controller.
 */
static struct pci_driver disnvm_driver = {
	.name = DISNVM_NAME,
	.id_table = NULL,
	.probe = disnvm_probe,
	.remove = disnvm_remove,
	.dev_groups = disnvm_groups,
};

static int __init disnvm_init(void)
{
	return pci_register_driver(&disnvm_driver);
}

static void __exit disnvm_exit(void)
{
	pci_unregister_driver(&disnvm_driver);
	ida_destroy(&disnvm_ida);
}

module_init(disnvm_init);
module_exit(disnvm_exit);

#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)
/* The dma-buf API is exported in a symbol namespace; its name became a string literal in 6.13. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
MODULE_IMPORT_NS("DMA_BUF");
#else
MODULE_IMPORT_NS(DMA_BUF);
#endif
#endif
MODULE_DESCRIPTION("NVMe controllers for userspace drivers (libnvm): BAR0 mmap, DMA, dma-buf import");
MODULE_AUTHOR("libnvm");
MODULE_LICENSE("GPL");
